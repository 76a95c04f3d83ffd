//! Unit tests of the PQ store's code layouts: 2-bit rows against one byte per
//! code, version-1 files (2-bit codes as nibbles), corrupted padding bits;
//! and of its pre-transforms: the form they are held in and its bytes.

use std::path::Path;

use aqpim_pq::CodeWidth;

use super::*;
use crate::spec::KeyMetric;
use crate::store::from_bytes;

/// A store of `spec` with `n` prefilled tokens and 3 appended ones in every
/// layer (KV-like data, fixed seeds).
fn filled(spec: &str, shape: KvShape, n: usize) -> PqStore {
    let KvSpec::Pq(pq) = spec.parse::<KvSpec>().unwrap() else {
        panic!("{spec} is not a PQ spec")
    };
    let mut s = PqStore::new(shape, pq).unwrap();
    let (h, d) = (shape.num_kv_heads(), shape.head_dim());
    for layer in 0..shape.num_layers() {
        let seed = 11 * layer as u64;
        let k = aqpim_pq::synth::kv_like(h * n, d, seed + 1);
        let v = aqpim_pq::synth::kv_like(h * n, d, seed + 2);
        s.prefill(layer, &k, &v).unwrap();
        for t in 0..3 {
            let k = aqpim_pq::synth::kv_like(h, d, seed + 3 + t);
            let v = aqpim_pq::synth::kv_like(h, d, seed + 7 + t);
            s.append(layer, &k, &v).unwrap();
        }
    }
    s
}

/// Rewrites `bytes` as format `version` and reseals the CRC.
fn as_version(mut bytes: Vec<u8>, version: u32) -> Vec<u8> {
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

const SHAPE: (usize, usize, usize) = (2, 2, 12);

fn shape() -> KvShape {
    KvShape::new(SHAPE.0, SHAPE.1, SHAPE.2).unwrap()
}

#[test]
fn two_bit_rows_hold_the_codes_of_one_byte_rows() {
    // d = 12: M = 12 (3 bytes a row), and M = 6 / 4 with 1- and 2-bit codes
    // (2 bytes with padding, 1 byte).
    for base in [
        "pq:dsub=1,nbits=2,sinks=2,window=4,iters=3",
        "pq:kdsub=2,vdsub=3,kbits=1,vbits=2,sinks=1,window=3,iters=3,outliers=100",
    ] {
        let packed = filled(base, shape(), 40);
        let loose = filled(&format!("{base},pack=false"), shape(), 40);
        for layer in 0..SHAPE.0 {
            for h in 0..SHAPE.1 {
                let (a, b) = (
                    packed.head(layer, h).unwrap(),
                    loose.head(layer, h).unwrap(),
                );
                for (pa, pb) in [(a.key_codes, b.key_codes), (a.value_codes, b.value_codes)] {
                    let m = pa.num_subspaces();
                    assert_eq!(pa.width(), CodeWidth::Crumb, "{base}");
                    assert_eq!(pb.width(), CodeWidth::Byte, "{base}");
                    assert_eq!(pa.row_bytes(), m.div_ceil(4), "{base}");
                    assert_eq!(pa.data().len(), pa.tokens() * m.div_ceil(4));
                    assert_eq!(pa.tokens(), pb.tokens());
                    assert!(pa.tokens() > 0);
                    assert_eq!(pa.to_u8(), pb.to_u8(), "{base}");
                    assert_eq!(
                        pa.code(pa.tokens() - 1, m - 1),
                        pb.code(pb.tokens() - 1, m - 1)
                    );
                }
                assert_eq!(
                    packed.reconstruct(layer, h).unwrap(),
                    loose.reconstruct(layer, h).unwrap(),
                    "{base}: decoded vectors differ"
                );
            }
        }
        let (rp, rl) = (packed.memory_report(), loose.memory_report());
        let e = rp.tokens_by_region.encoded as u64 * SHAPE.1 as u64;
        let (mk, mv) = (
            packed.params(KvPart::Keys).num_subspaces() as u64,
            packed.params(KvPart::Values).num_subspaces() as u64,
        );
        assert_eq!(rp.bytes.key_codes, e * mk.div_ceil(4));
        assert_eq!(rp.bytes.value_codes, e * mv.div_ceil(4));
        assert_eq!(rl.bytes.key_codes, e * mk);
        assert_eq!(rp.total_bytes, packed.heap_bytes().used);
    }
}

#[test]
fn version_1_files_with_nibble_codes_load_as_2_bit_rows() {
    for spec in [
        "pq:dsub=1,nbits=2,sinks=2,window=4,iters=3",
        "pq:kdsub=2,vdsub=3,kbits=1,vbits=2,sinks=1,window=3,iters=3,outliers=100",
    ] {
        let store = filled(spec, shape(), 40);
        // The same store as version 1 wrote it: 2-bit codes as nibbles.
        let mut old = store.clone();
        for p in 0..2 {
            let m = old.params[0][p].num_subspaces();
            old.widths[0][p] = CodeWidth::Nibble;
            for head in old.layers.iter_mut().flat_map(|l| &mut l.heads) {
                let codes = CodeWidth::Crumb.unpack(&head.codes[p], m).unwrap();
                head.codes[p] = aqpim_pq::pack_4bit(&codes, m).unwrap();
            }
        }
        let v1 = as_version(old.to_bytes(), 1);
        let loaded = from_bytes(&v1, Path::new("v1.kv")).unwrap();
        assert_eq!(loaded.to_bytes(), store.to_bytes(), "{spec}");
        // Read as version 2, the same bytes are the wrong size.
        let e = from_bytes(&as_version(old.to_bytes(), 2), Path::new("v2.kv")).unwrap_err();
        assert!(matches!(e, KvError::BadFile { .. }), "{e}");
    }
    // Unknown versions are refused by name.
    let bytes = filled("pq:dsub=2,nbits=4,iters=3", shape(), 20).to_bytes();
    assert!(from_bytes(&as_version(bytes.clone(), 1), Path::new("v1.kv")).is_ok());
    for v in [0, crate::KV_VERSION + 1] {
        let e = from_bytes(&as_version(bytes.clone(), v), Path::new("vx.kv")).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("format version {v} is not supported")),
            "{e}"
        );
    }
}

#[test]
fn set_padding_bits_and_wide_codes_are_refused() {
    // K: M = 6, 2 bytes a row, the high nibble of the second byte is padding.
    let spec = "pq:kdsub=2,vdsub=3,kbits=1,vbits=2,sinks=1,window=3,iters=3";
    let store = filled(spec, shape(), 40);
    assert!(from_bytes(&store.to_bytes(), Path::new("ok.kv")).is_ok());
    let mut bad = store.clone();
    bad.layers[1].heads[0].codes[0][2 * 2 + 1] |= 0x40;
    let e = from_bytes(&bad.to_bytes(), Path::new("pad.kv"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1, head 0, keys: token 2: padding bits 0x40 of byte 1 are set"),
        "{e}"
    );
    // kbits = 1: a 2-bit field holding 2 or 3 is out of range.
    let mut bad = store.clone();
    bad.layers[0].heads[1].codes[0][3 * 2] |= 0b11_0000;
    let e = from_bytes(&bad.to_bytes(), Path::new("wide.kv"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 0, head 1, keys: token 3, subspace 2: code 3 is out of range (ksub = 2)"),
        "{e}"
    );
    // Nibble rows (nbits = 3, M = 3): padding checked the same way.
    let store = filled("pq:dsub=4,nbits=3,iters=3", shape(), 140);
    let mut bad = store.clone();
    bad.layers[0].heads[0].codes[1][1] |= 0x10;
    let e = from_bytes(&bad.to_bytes(), Path::new("nib.kv"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("values: token 0: padding bits 0x10 of byte 1 are set"),
        "{e}"
    );
}

/// Every head's transposed blocks equal the transposition of its rows.
fn assert_blocks_match_rows(s: &PqStore, what: &str) {
    for layer in 0..s.shape.num_layers() {
        let keep = s.keeps_blocks(s.class(layer));
        for h in 0..s.shape.num_kv_heads() {
            let view = s.head(layer, h).unwrap();
            for (p, codes) in [view.key_codes, view.value_codes].into_iter().enumerate() {
                let m = codes.num_subspaces();
                let want = if keep[p] { codes.tokens() / 64 * 64 } else { 0 };
                assert_eq!(codes.block_tokens(), want, "{what}: layer {layer} head {h}");
                assert_eq!(codes.lane_nibbles(), p == 1);
                let one = codes.to_u8();
                let row = codes.block_bytes() / m.max(1);
                for (b, blk) in codes.blocks().chunks_exact(m * row).enumerate() {
                    for t in 0..64 {
                        for j in 0..m {
                            let got = match p {
                                1 => aqpim_pq::lane_nibble(&blk[j * row..], t),
                                _ => blk[j * 64 + t],
                            };
                            assert_eq!(got, one[(b * 64 + t) * m + j], "{what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn transposed_blocks_follow_appends_and_loads() {
    // One-byte keys and 4-bit values (both kept), 8-bit values (keys only),
    // 2-bit codes (neither); 400 + 3 + 70 appended tokens cross block
    // edges.
    for spec in [
        "pq:dsub=2,kbits=8,vbits=4,sinks=2,window=4,iters=2,outliers=50",
        "pq:dsub=4,nbits=8,sinks=2,window=4,iters=2",
        "pq:dsub=1,nbits=2,sinks=1,window=3,iters=2",
    ] {
        let mut s = filled(spec, shape(), 400);
        assert_blocks_match_rows(&s, spec);
        let (h, d) = (SHAPE.1, SHAPE.2);
        for t in 0..70 {
            let k = aqpim_pq::synth::kv_like(h, d, 100 + t);
            let v = aqpim_pq::synth::kv_like(h, d, 200 + t);
            s.append(0, &k, &v).unwrap();
        }
        assert_blocks_match_rows(&s, spec);
        let kept = s.head(0, 0).unwrap().key_codes.block_tokens();
        assert_eq!(
            kept > 0,
            !spec.contains("nbits=2"),
            "{spec}: {kept} tokens in blocks"
        );
        let loaded = from_bytes(&s.to_bytes(), Path::new("mem")).unwrap();
        assert_blocks_match_rows(loaded.as_pq().unwrap(), spec);
    }
}

#[test]
fn blocks_stay_outside_the_accounted_heap() {
    // 400 + 3 tokens: whole blocks exist, and the heap still equals the
    // accounting; the blocks are reported apart.
    let s = filled(
        "pq:dsub=2,kbits=8,vbits=4,sinks=2,window=4,iters=2",
        shape(),
        400,
    );
    assert_eq!(s.memory_report().total_bytes, s.heap_bytes().used);
    let m = [
        s.params[0][0].num_subspaces(),
        s.params[0][1].num_subspaces(),
    ];
    let view = s.head(0, 0).unwrap();
    let tokens = view.key_codes.block_tokens();
    assert_eq!(tokens, 384, "{} encoded", view.key_codes.tokens());
    let per_head = (tokens * m[0] + tokens * m[1] / 2) as u64;
    assert_eq!(s.block_bytes().used, per_head * (SHAPE.0 * SHAPE.1) as u64);
}

#[test]
fn monomial_transforms_are_held_compactly_and_counted_as_held() {
    // d = 12: scaling and the halves layout give `A = D P`; the heap holds
    // `4 d + 6 d` bytes per transform, as the accounting counts them, and a
    // saved store reads back with the same (compact) transforms.
    let spec = "pq:dsub=2,nbits=4,sinks=2,window=4,iters=2,center=true,scale=true,layout=halves";
    let s = filled(spec, shape(), 60);
    let held: Vec<_> = s.transforms.iter().flatten().flatten().collect();
    assert_eq!(held.len(), 2 * SHAPE.0 * SHAPE.1);
    for t in &held {
        assert!(t.monomial_parts().is_some(), "{spec}: a dense transform");
        assert_eq!(t.bytes(), 10 * SHAPE.2);
    }
    assert_eq!(s.memory_report().total_bytes, s.heap_bytes().used);
    let loaded = from_bytes(&s.to_bytes(), Path::new("mem")).unwrap();
    let loaded = loaded.as_pq().unwrap();
    assert_eq!(loaded.transforms, s.transforms);
    assert_eq!(loaded.heap_bytes().used, s.heap_bytes().used);
}

#[test]
fn fitted_monomial_transforms_equal_the_dense_products_they_replace() {
    // The transform `fit_transform` builds compactly is the matrix `P M`
    // it built densely before (`matmul` of the layout's permutation and the
    // diagonal `M`), so codebooks trained on it and codes encoded with it
    // are unchanged.
    use aqpim_pq::transform::{matmul, permutation_matrix, second_moment};
    let d = SHAPE.2;
    let data = aqpim_pq::synth::kv_like(200, d, 5);
    let queries = aqpim_pq::synth::kv_like(300, d, 6);
    let moment = second_moment(&queries, d);
    for spec in [
        "pq:dsub=2,nbits=4,layout=halves,whiten=diag",
        "pq:dsub=3,nbits=4,center=true,scale=true,layout=halves",
        "pq:dsub=2,nbits=4,whiten=diag",
        "pq:dsub=2,nbits=4,layout=halves",
    ] {
        let KvSpec::Pq(pq) = spec.parse::<KvSpec>().unwrap() else {
            panic!("{spec} is not a PQ spec")
        };
        let dsub = pq.params(d, KvPart::Keys).unwrap().dsub();
        let t = fit_transform(&pq, KvPart::Keys, &data, d, Some(&moment))
            .unwrap()
            .unwrap();
        let (perm, diag) = t.monomial_parts().expect("monomial");
        // The diagonal `M` as the dense path computed it.
        let m: Vec<f32> = if pq.transforms.whiten != KeyMetric::Euclidean {
            let top = (0..d).map(|i| moment[i * d + i]).fold(0f64, f64::max);
            (0..d)
                .map(|i| moment[i * d + i].max(1e-6 * top).sqrt() as f32)
                .collect()
        } else if pq.transforms.scale {
            let mu = aqpim_pq::transform::channel_mean(&data, d, None);
            let sq: Vec<f32> = data
                .iter()
                .zip(mu.iter().cycle())
                .map(|(x, m)| (x - m) * (x - m))
                .collect();
            let var = aqpim_pq::transform::channel_mean(&sq, d, None);
            let top = var.iter().cloned().fold(0f32, f32::max);
            var.iter()
                .map(|&v| 1.0 / v.max(1e-6 * top).sqrt())
                .collect()
        } else {
            vec![1.0; d]
        };
        let mut dm = vec![0f32; d * d];
        m.iter().enumerate().for_each(|(i, &v)| dm[i * d + i] = v);
        let p = pq.transforms.layout.permutation(d, dsub);
        let dense = matmul(&permutation_matrix(&p), &dm, d);
        assert_eq!(t.matrix().unwrap().as_ref(), dense.as_slice(), "{spec}");
        for i in 0..d {
            assert_eq!(usize::from(perm[i]), p[i], "{spec}");
            assert_eq!(diag[i], m[p[i]], "{spec}");
        }
    }
}

#[test]
fn fp16_layers_hold_every_token_exactly() {
    // Layer 1 kept in FP16: it encodes nothing and reconstructs the FP16
    // rounding of what it was given; layer 0 encodes as without the key.
    let s = filled(
        "pq:dsub=2,nbits=4,sinks=2,window=4,iters=3,fp16_layers=1",
        shape(),
        40,
    );
    let plain = filled("pq:dsub=2,nbits=4,sinks=2,window=4,iters=3", shape(), 40);
    assert_eq!(s.layers[1].regions.encoded, 0);
    assert_eq!(s.layers[1].regions.total(), 43);
    assert_eq!(s.layers[0].regions, plain.layers[0].regions);
    assert!(s.layers[0].regions.encoded > 0);
    let (h, d) = (SHAPE.1, SHAPE.2);
    // `filled` prefills layer 1 with keys of seed 11 + 1.
    let given = aqpim_pq::synth::kv_like(h * 40, d, 12);
    let kv = s.reconstruct(1, 1).unwrap();
    for (t, row) in kv.keys.chunks_exact(d).take(40).enumerate() {
        let want = &given[(40 + t) * d..(41 + t) * d];
        for (a, b) in row.iter().zip(want) {
            assert_eq!(*a, f16::from_f32(*b).to_f32(), "token {t}");
        }
    }
    assert_eq!(
        s.reconstruct(0, 0).unwrap(),
        plain.reconstruct(0, 0).unwrap()
    );
    // Saved and read back, the layer stays FP16 and goes on as before.
    let back = from_bytes(&s.to_bytes(), Path::new("fp16.kv")).unwrap();
    assert_eq!(back.regions(1).unwrap(), s.layers[1].regions);
    assert_eq!(back.reconstruct(1, 1).unwrap(), kv);
}

#[test]
fn wide_layers_code_as_a_store_of_their_format_would() {
    // Layer 1 in the wide format: each layer holds exactly what a store of
    // its own format holds (same data, same training), and the memory
    // report adds the two formats' codes and codebooks layer by layer.
    let base = "pq:dsub=2,nbits=4,sinks=2,window=4,iters=3";
    let wide = filled(
        &format!("{base},wide_layers=1,wide_kdsub=1,wide_kbits=5,wide_vbits=2"),
        shape(),
        40,
    );
    let plain = filled(base, shape(), 40);
    let other = filled(
        "pq:kdsub=1,kbits=5,vdsub=2,vbits=2,sinks=2,window=4,iters=3",
        shape(),
        40,
    );
    for h in 0..SHAPE.1 {
        assert_eq!(
            wide.reconstruct(0, h).unwrap(),
            plain.reconstruct(0, h).unwrap()
        );
        assert_eq!(
            wide.reconstruct(1, h).unwrap(),
            other.reconstruct(1, h).unwrap()
        );
        let v = wide.head(1, h).unwrap();
        assert_eq!(v.key_codes.row_bytes(), 12);
        assert_eq!(v.key_codebook.unwrap().params().ksub(), 32);
        assert_eq!(v.value_codebook.unwrap().params().ksub(), 4);
    }
    assert_eq!(wide.params_at(1, KvPart::Keys).unwrap().num_subspaces(), 12);
    assert_eq!(wide.params_at(0, KvPart::Keys).unwrap().num_subspaces(), 6);
    assert!(wide.params_at(2, KvPart::Keys).is_err());
    let (w, p, o) = (
        wide.memory_report().bytes,
        plain.memory_report().bytes,
        other.memory_report().bytes,
    );
    assert_eq!(2 * w.key_codes, p.key_codes + o.key_codes);
    assert_eq!(2 * w.value_codes, p.value_codes + o.value_codes);
    assert_eq!(2 * w.key_codebooks, p.key_codebooks + o.key_codebooks);
    assert_eq!(2 * w.value_codebooks, p.value_codebooks + o.value_codebooks);
    // The analytic accounting of a full cache agrees with the store's.
    let analytic = crate::account(&shape(), wide.spec(), 43).unwrap();
    assert_eq!(analytic.bytes.key_codes, w.key_codes);
    assert_eq!(analytic.bytes.key_codebooks, w.key_codebooks);
    assert_eq!(analytic.bytes.value_codebooks, w.value_codebooks);
    // Saved and read back, each layer keeps its format.
    let back = from_bytes(&wide.to_bytes(), Path::new("wide.kv")).unwrap();
    for l in 0..2 {
        assert_eq!(
            back.reconstruct(l, 1).unwrap(),
            wide.reconstruct(l, 1).unwrap()
        );
    }
    // A codebook of the base shape is refused for a wide layer.
    let mut empty = PqStore::new(shape(), *wide.pq_spec()).unwrap();
    let cb = plain.codebook(1, 0, KvPart::Keys).unwrap().unwrap().clone();
    let vb = plain
        .codebook(1, 0, KvPart::Values)
        .unwrap()
        .unwrap()
        .clone();
    let e = empty
        .set_codebooks(1, 0, cb.clone(), vb.clone())
        .unwrap_err();
    assert!(e.to_string().contains("M = 12"), "{e}");
    empty.set_codebooks(0, 0, cb, vb).unwrap();
}

#[test]
fn wide_layers_refine_as_their_own_keys_say() {
    // Values refined in layer 0 only: layer 1 (wide, `wide_vrefine=0`) keeps
    // its trained codebook, as a store without refinement does.
    let base = "pq:dsub=2,nbits=4,sinks=2,window=4,iters=3,wide_layers=1,wide_vbits=3";
    let refined = filled(&format!("{base},vrefine=1,wide_vrefine=0"), shape(), 40);
    let fixed = filled(base, shape(), 40);
    let book = |s: &PqStore, l| s.codebook(l, 0, KvPart::Values).unwrap().unwrap().clone();
    assert_eq!(book(&refined, 1), book(&fixed, 1));
    assert_ne!(book(&refined, 0), book(&fixed, 0));
}
