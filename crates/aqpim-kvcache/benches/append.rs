//! Criterion benchmark of `KvStore::append` (placeholder, filled below).
fn main() {}
