//! The AVX2 and FMA implementation of [`super::accumulate_rows`]: eight
//! subspaces a pass, one load of a centroid and one fused multiply-add a
//! code into accumulators kept in registers.

use std::arch::x86_64::*;

/// The tokens of one call: `codes` holds `n x m` one-byte codes
/// (row-major), `weights` the `n` softmax weights, `centroids` the value
/// codebook (`m x 256 x DSUB` floats).
pub(super) struct Rows<'a> {
    pub(super) codes: &'a [u8],
    pub(super) m: usize,
    pub(super) centroids: &'a [f32],
    pub(super) weights: &'a [f32],
}

/// Subspaces a pass: one 64-bit load holds a token's codes, and the pass's
/// codebooks (4 KB each for `dsub = 4`) fill but do not overflow a 32 KB L1.
const PASS: usize = 8;

/// How far ahead the first pass prefetches the rows, in bytes: the
/// hardware prefetcher alone left the loads of a stream from DRAM exposed
/// (32 KV heads' rows at 32K tokens, `M = 32`, one thread: 0.36 ns a code
/// without, 0.27-0.29 with 1-8 KB ahead, 2 KB the best, on the project
/// machine).
const PREFETCH: usize = 2048;

/// A cache line, the unit of [`pass`]'s prefetches of what comes next.
const LINE: usize = 64;

/// [`super::accumulate_rows`] for `DSUB` (1, 2 or 4) floats a centroid,
/// each in the low lanes of a 128-bit register: passes of eight subspaces,
/// then the rest one at a time. The passes after the first read the rows
/// from L2 and leave the memory idle: pass `1 + r` prefetches `ahead[r]`.
///
/// A safe `#[target_feature]` function: code compiled without AVX2, FMA
/// and BMI1 calls it only after checking for them at run time (its `unsafe`
/// call site). Needs `rows.centroids.len() >= M x 256 x DSUB`, `o.len() >=
/// M x DSUB` and `rows.codes.len() == rows.weights.len() x M`; panics
/// otherwise.
#[target_feature(enable = "avx2,fma,bmi1")]
pub(super) fn accumulate<const DSUB: usize>(rows: &Rows<'_>, ahead: [&[u8]; 2], o: &mut [f32]) {
    assert_eq!(
        rows.codes.len(),
        rows.weights.len() * rows.m,
        "rows and weights"
    );
    let passes = rows.m / PASS;
    for p in 0..passes {
        let region: &[u8] = match p.checked_sub(1) {
            Some(r) => ahead.get(r).copied().unwrap_or_default(),
            None => &[],
        };
        pass::<DSUB>(rows, p * PASS, region, o);
    }
    for s in passes * PASS..rows.m {
        single::<DSUB>(rows, s, o);
    }
}

/// Subspaces `s0 .. s0 + 8` of [`accumulate`]: eight accumulators, one a
/// subspace, over every token, then added to `o`. The first pass (`s0 ==
/// 0`) reads the rows from memory and prefetches them [`PREFETCH`] bytes
/// ahead; a later one finds them in L2 and prefetches `ahead` into L2, a
/// line every two tokens, from its first token on.
#[inline]
#[target_feature(enable = "avx2,fma,bmi1")]
fn pass<const DSUB: usize>(rows: &Rows<'_>, s0: usize, ahead: &[u8], o: &mut [f32]) {
    let (m, n) = (rows.m, rows.weights.len());
    assert!(s0 + PASS <= m, "subspaces {s0} .. {} of {m}", s0 + PASS);
    let book = &rows.centroids[s0 * 256 * DSUB..(s0 + PASS) * 256 * DSUB];
    let mut acc = [_mm_setzero_ps(); PASS];
    // Tokens that prefetch, in pairs: as many as `ahead` has lines.
    let paired = (2 * ahead.len().div_ceil(LINE)).min(n) / 2 * 2;
    let (near, far) = rows.weights.split_at(paired);
    let start = rows.codes.as_ptr().wrapping_add(s0);
    for (i, p) in near.chunks_exact(2).enumerate() {
        // A prefetch never faults; `i x LINE` stays inside `ahead` anyway.
        _mm_prefetch::<_MM_HINT_T1>(ahead.as_ptr().wrapping_add(i * LINE).cast());
        let row = start.wrapping_add(2 * i * m);
        // SAFETY: tokens `2i` and `2i + 1` are below `n`, and `s0 + 8 <=
        // m`: each row's eight bytes at `s0` lie inside `codes` (`n x m`).
        unsafe {
            token::<DSUB>(&mut acc, book, row, p[0]);
            token::<DSUB>(&mut acc, book, row.add(m), p[1]);
        }
    }
    let rest = start.wrapping_add(paired * m);
    match s0 {
        // SAFETY: the rows of tokens `paired .. n` lie inside `codes`, their
        // eight bytes at `s0` too (as above); `book` holds 8 codebooks.
        0 => unsafe { stream::<DSUB, PREFETCH>(&mut acc, book, rest, m, far) },
        // SAFETY: as above.
        _ => unsafe { stream::<DSUB, 0>(&mut acc, book, rest, m, far) },
    }
    for (k, a) in acc.iter().enumerate() {
        add_lanes::<DSUB>(*a, &mut o[(s0 + k) * DSUB..(s0 + k + 1) * DSUB]);
    }
}

/// [`token`] for `weights.len()` tokens whose rows start at `rows`, `m`
/// bytes apart, each prefetching the rows `REACH` bytes ahead into L1 (none
/// when 0).
///
/// # Safety
/// `rows + t x m` must point to eight readable bytes for every token `t`,
/// and `book` hold `8 x 256 x DSUB` floats.
#[inline]
#[target_feature(enable = "avx2,fma,bmi1")]
unsafe fn stream<const DSUB: usize, const REACH: usize>(
    acc: &mut [__m128; PASS],
    book: &[f32],
    rows: *const u8,
    m: usize,
    weights: &[f32],
) {
    for (t, &p) in weights.iter().enumerate() {
        let row = rows.wrapping_add(t * m);
        if REACH != 0 {
            // A prefetch never faults, past the end of the rows too.
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(REACH).cast());
        }
        // SAFETY: the caller's contract.
        unsafe { token::<DSUB>(acc, book, row, p) };
    }
}

/// One token of a [`pass`]: `acc[k] += p x book[k][code_k]` for the eight
/// codes at `row`, subspace `k`'s 256 centroids at `book[k x 256 x DSUB]`.
///
/// # Safety
/// `row` must point to eight readable bytes and `book` hold `8 x 256 x
/// DSUB` floats.
#[inline]
#[target_feature(enable = "avx2,fma,bmi1")]
unsafe fn token<const DSUB: usize>(acc: &mut [__m128; PASS], book: &[f32], row: *const u8, p: f32) {
    // SAFETY: the caller's contract.
    let word = unsafe { row.cast::<u64>().read_unaligned() };
    let offsets = offsets::<DSUB>(word);
    let p = _mm_set1_ps(p);
    let base = book.as_ptr().cast::<u8>();
    for (k, (a, off)) in acc.iter_mut().zip(offsets).enumerate() {
        // SAFETY: `off` is at most `255 x DSUB x 4` bytes, so the centroid's
        // `DSUB x 4` bytes end inside subspace k's `256 x DSUB` floats.
        let c = unsafe { base.add(k * 256 * DSUB * 4 + off).cast::<f32>() };
        // SAFETY: as above, `c` points to DSUB floats of `book`.
        *a = _mm_fmadd_ps(p, unsafe { load::<DSUB>(c) }, *a);
    }
}

/// The byte offsets `code_k x DSUB x 4` of the eight centroids whose codes
/// `word` holds (little-endian, subspace `k` in byte `k`).
///
/// `DSUB = 4` scales by 16, which x86 addressing does not (it scales by 8
/// at most): a byte at a time costs three integer instructions a code
/// (shift, zero extension, scaling shift). Here two shifts and two masks
/// scale all eight, even codes in the 16-bit fields of one word and odd
/// codes in another, and one field extraction a code remains.
#[inline]
#[target_feature(enable = "bmi1")]
fn offsets<const DSUB: usize>(word: u64) -> [usize; PASS] {
    if DSUB != 4 {
        return std::array::from_fn(|k| usize::from((word >> (8 * k)) as u8) * DSUB * 4);
    }
    const FIELDS: u64 = 0x0FF0_0FF0_0FF0_0FF0;
    let even = (word << 4) & FIELDS;
    let odd = (word >> 4) & FIELDS;
    let field = |w: u64, i: u32| _bextr_u64(w, 16 * i, 16) as usize;
    [
        (even & 0xFFFF) as usize,
        (odd & 0xFFFF) as usize,
        field(even, 1),
        field(odd, 1),
        field(even, 2),
        field(odd, 2),
        (even >> 48) as usize,
        (odd >> 48) as usize,
    ]
}

/// Subspace `s` alone (the `M mod 8` subspaces after the passes).
#[target_feature(enable = "avx2,fma,bmi1")]
fn single<const DSUB: usize>(rows: &Rows<'_>, s: usize, o: &mut [f32]) {
    let cents = rows.centroids[s * 256 * DSUB..(s + 1) * 256 * DSUB]
        .as_chunks::<DSUB>()
        .0;
    let mut acc = _mm_setzero_ps();
    for (row, &p) in rows.codes.chunks_exact(rows.m).zip(rows.weights) {
        let c: &[f32; DSUB] = &cents[usize::from(row[s])];
        // SAFETY: `c` holds DSUB readable floats.
        acc = _mm_fmadd_ps(_mm_set1_ps(p), unsafe { load::<DSUB>(c.as_ptr()) }, acc);
    }
    add_lanes::<DSUB>(acc, &mut o[s * DSUB..(s + 1) * DSUB]);
}

/// `o[j] += a[j]` for the `DSUB` low lanes of `a`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn add_lanes<const DSUB: usize>(a: __m128, o: &mut [f32]) {
    let mut v = [0f32; 4];
    // SAFETY: `v` holds 4 floats.
    unsafe { _mm_storeu_ps(v.as_mut_ptr(), a) };
    for (o, x) in o.iter_mut().zip(&v[..DSUB]) {
        *o += x;
    }
}

/// One centroid of `DSUB` (1, 2 or 4) floats in the low lanes of a
/// register, the others zero.
///
/// # Safety
/// `c` must point to `DSUB` readable floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load<const DSUB: usize>(c: *const f32) -> __m128 {
    match DSUB {
        // SAFETY: the caller's contract: 16 readable bytes.
        4 => unsafe { _mm_loadu_ps(c) },
        // SAFETY: as above, 8 bytes.
        2 => unsafe { _mm_castpd_ps(_mm_load_sd(c.cast())) },
        // SAFETY: as above, 4 bytes.
        _ => unsafe { _mm_load_ss(c) },
    }
}
