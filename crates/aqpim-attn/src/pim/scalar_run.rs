//! Functional runs of scalar-code attention: one head's codes and group
//! parameters loaded into the banks in the layout of `scalar.rs` (codes and
//! the parameters they use in the same rows), the `LDP`/`QMAC` programs run
//! in the simulator's functional mode, and the slices merged on the host
//! with the FP16 window's slice.

use aqpim_kvcache::ScalarHeadView;
use aqpim_pim::{Device, Program, SimOptions, Simulator};
use half::f16;

use crate::error::{AttnError, Result};
use crate::pim::functional::{
    f16_bytes, load_slot, merge_records, raw_f16_bytes, read_records, regroup_passes,
};
use crate::pim::layout::Geom;
use crate::pim::placement::RowAlloc;
use crate::pim::program::{self, bank_sel, Out};
use crate::pim::scalar;
use crate::pim::scalar_geom::{Role, ScalarPart};
use crate::pim::{PimKind, PimRun, ScalarCodes, ScalarScale};

/// One head's scalar-coded tokens as the host holds them (the store's
/// layout). Codes: `n x ceil(d bits / 8)` bytes per part, element `c` of a
/// token at bits `c bits ..` from the low bit of byte 0. Parameters, as
/// bytes: an FP16 `(min, scale)` pair (little-endian, 4 bytes) or an MX
/// exponent (1 byte) per group; keys by `(token / G, channel)` for
/// [`ScalarScale::MinScale`] (`(n / G) x d`) or `(token, channel / G)` for
/// [`ScalarScale::SharedExp`] (`n x d / G`); values by `(token, channel /
/// G)` in both.
#[derive(Debug, Clone, Copy)]
pub struct ScalarHead<'a> {
    /// The format.
    pub codes: ScalarCodes,
    /// Head dimension (d).
    pub head_dim: usize,
    /// Key codes.
    pub key_codes: &'a [u8],
    /// Key group parameters.
    pub key_params: &'a [u8],
    /// Value codes.
    pub value_codes: &'a [u8],
    /// Value group parameters.
    pub value_params: &'a [u8],
}

impl ScalarHead<'_> {
    /// Bytes of one token's codes.
    fn token_bytes(&self) -> usize {
        (self.head_dim * self.codes.bits as usize).div_ceil(8)
    }

    /// Encoded tokens.
    pub fn tokens(&self) -> usize {
        self.key_codes.len() / self.token_bytes().max(1)
    }

    fn entry_bytes(&self) -> usize {
        match self.codes.scale {
            ScalarScale::MinScale => 4,
            ScalarScale::SharedExp => 1,
        }
    }

    /// Checks the buffers' sizes against the format.
    fn check(&self) -> Result<()> {
        let (d, g, n) = (self.head_dim, self.codes.group, self.tokens());
        let eb = self.entry_bytes();
        let key_entries = match self.codes.scale {
            ScalarScale::MinScale => n / g.max(1) * d,
            ScalarScale::SharedExp => n * d / g.max(1),
        };
        let ok = g > 0
            && d.is_multiple_of(g)
            && self.key_codes.len() == n * self.token_bytes()
            && self.value_codes.len() == n * self.token_bytes()
            && (self.codes.scale == ScalarScale::SharedExp || n.is_multiple_of(g))
            && self.key_params.len() == key_entries * eb
            && self.value_params.len() == n * d / g * eb;
        if ok {
            Ok(())
        } else {
            Err(AttnError::shape(
                "scalar head",
                format!("{n} tokens of {d} codes with their group parameters"),
                format!(
                    "{} and {} code bytes, {} and {} parameter bytes",
                    self.key_codes.len(),
                    self.value_codes.len(),
                    self.key_params.len(),
                    self.value_params.len()
                ),
            ))
        }
    }

    /// Code of `channel` of `token` in a part's codes.
    fn code(&self, codes: &[u8], token: usize, channel: usize) -> u8 {
        let bits = self.codes.bits as usize;
        let bit = token * self.token_bytes() * 8 + channel * bits;
        (codes[bit / 8] >> (bit % 8)) & ((1u16 << bits) - 1) as u8
    }
}

/// The bytes of row `r` of a part in bank `b` of a slice of `len` tokens
/// from token `start`: its code columns, then its parameter columns.
fn row_bytes(
    device: &Device,
    head: &ScalarHead<'_>,
    p: &ScalarPart,
    keys: bool,
    g: &Geom,
    (b, r): (usize, usize),
    (start, len): (usize, usize),
) -> Vec<u8> {
    let cw = device.org.column_bytes;
    let (d, gsz, bits) = (head.head_dim, head.codes.group, head.codes.bits as usize);
    let (codes, params) = if keys {
        (head.key_codes, head.key_params)
    } else {
        (head.value_codes, head.value_params)
    };
    let eb = head.entry_bytes();
    // Slice token of a bank slot, if it holds one.
    let token = |slot: usize| {
        let t = b * g.n_b + slot;
        (slot < g.n_b && t < len).then_some(start + t)
    };
    let mut row = vec![0u8; device.org.columns * cw];
    let total = p.columns(g.n_b);
    let j0 = r * p.per_row;
    for j in j0..((r + 1) * p.per_row).min(total) {
        let col = &mut row[(j - j0) * cw..(j - j0 + 1) * cw];
        for i in 0..p.n {
            let (slot, channel) = match p.role {
                Role::KeysByChannel { block } => {
                    let cpb = block / p.n;
                    let (blk, c, k) = (j / (d * cpb), j % (d * cpb) / cpb, j % cpb);
                    (blk * block + k * p.n + i, c)
                }
                _ => (j / p.cpt, j % p.cpt * p.n + i),
            };
            if let Some(t) = token(slot) {
                let q = head.code(codes, t, channel);
                let bit = i * bits;
                col[bit / 8] |= q << (bit % 8);
            }
        }
    }
    // Parameter entries from E(j0), in the order the QMACs use them.
    let first = p.entry(j0);
    let per_row = p.param_cols * cw / eb;
    for k in 0..per_row {
        let e = first + k;
        let (slot, index) = match p.role {
            Role::KeysByChannel { block } => {
                let per = block / gsz;
                let (blk, c, gl) = (e / (d * per), e % (d * per) / per, e % per);
                let slot = blk * block + gl * gsz;
                (slot, token(slot).map(|t| t / gsz * d + c))
            }
            _ => {
                let (slot, cg) = (e / (d / gsz), e % (d / gsz));
                (slot, token(slot).map(|t| t * (d / gsz) + cg))
            }
        };
        if let (true, Some(i)) = (slot < g.n_b, index) {
            let at = p.per_row * cw + k * eb;
            row[at..at + eb].copy_from_slice(&params[i * eb..(i + 1) * eb]);
        }
    }
    row
}

/// Scalar-code attention of `g` scaled queries (`g x d`) over one head:
/// its encoded tokens (`head`) cut into `slices` slices (each starting at a
/// multiple of the group, so that a bank's key groups are the store's), on
/// as many channels, plus its FP16 tokens (`fp_keys`, `fp_values`: `m x d`,
/// the sinks and recent window; none when empty) in one FP16 slice, run
/// functionally (`LDP`/`QMAC`, softmax, `MAC` for the FP16 slice) and
/// merged on the host.
pub fn scalar_head_on_pim(
    device: &Device,
    head: &ScalarHead<'_>,
    fp_keys: &[f32],
    fp_values: &[f32],
    queries: &[f32],
    slices: usize,
) -> Result<PimRun> {
    head.check()?;
    let d = head.head_dim;
    if queries.is_empty() || !queries.len().is_multiple_of(d) {
        return Err(AttnError::shape(
            "scalar_head_on_pim",
            "g x d queries",
            queries.len(),
        ));
    }
    if fp_keys.len() != fp_values.len() || !fp_keys.len().is_multiple_of(d) {
        return Err(AttnError::shape(
            "scalar_head_on_pim",
            "m x d FP16 keys and values",
            format!("{} and {}", fp_keys.len(), fp_values.len()),
        ));
    }
    let g = queries.len() / d;
    let n = head.tokens();
    let kind = PimKind::Scalar(head.codes);
    let mut parts = Vec::new();
    if n > 0 {
        let gsz = head.codes.group;
        let chunk = n.div_ceil(slices.max(1)).div_ceil(gsz) * gsz;
        let mut start = 0;
        while start < n {
            parts.push((start, chunk.min(n - start)));
            start += chunk;
        }
    }
    let mut sim = Simulator::new(device, SimOptions::default());
    let mut host = Vec::new();
    for q in queries.chunks_exact(d) {
        host.extend(f16_bytes(q.iter().copied()));
    }
    let host_bytes = host.len();
    sim.set_host_data(host);
    let mut out = Out::default();
    let mut alloc = RowAlloc::new(device);
    // Per record, its query head; per pass over a slice, its heads.
    let (mut owner, mut passes) = (Vec::new(), Vec::new());
    for (i, &(start, len)) in parts.iter().enumerate() {
        let ch = i % device.org.channels;
        let geom = Geom::new(device, kind, d, len)?;
        let sc = geom.sc.ok_or(AttnError::Unsupported(
            "a scalar slice without scalar geometry",
        ))?;
        let rows = alloc.slice(ch, &geom, 0);
        for b in 0..device.org.banks_per_channel {
            for (p, keys, base) in [(&sc.k, true, rows.k), (&sc.v, false, rows.v)] {
                for r in 0..p.rows(geom.n_b) {
                    let bytes = row_bytes(device, head, p, keys, &geom, (b, r), (start, len));
                    sim.write_bank(ch, bank_sel(device, b), base + r as u32, 0, &bytes)?;
                }
            }
        }
        for pass in geom.passes(device, g) {
            let at: Vec<u32> = pass.clone().map(|h| (h * 2 * d) as u32).collect();
            scalar::scalar_slice(&mut out, device, &geom, ch as u8, rows, &at);
            passes.push(pass.len());
            owner.extend(pass);
        }
    }
    let m = fp_keys.len() / d;
    if m > 0 {
        let ch = parts.len() % device.org.channels;
        let geom = Geom::new(device, PimKind::Fp16, d, m)?;
        let rows = alloc.slice(ch, &geom, 0);
        for t in 0..m {
            let (b, s) = geom.place(t);
            let at = s * geom.k.tb;
            let k = f16_bytes(fp_keys[t * d..(t + 1) * d].iter().copied());
            let v = f16_bytes(fp_values[t * d..(t + 1) * d].iter().copied());
            load_slot(&mut sim, device, ch, b, rows.k, at, &k)?;
            load_slot(&mut sim, device, ch, b, rows.v, at, &v)?;
        }
        let (lanes, cw) = (device.pim.lanes, device.org.column_bytes);
        for pass in geom.passes(device, g) {
            let at: Vec<u32> = pass.clone().map(|h| (h * 2 * d) as u32).collect();
            program::fp16_slice(&mut out, &geom, ch as u8, rows, &at, lanes, cw);
            passes.push(pass.len());
            owner.extend(pass);
        }
    }
    let program = Program::new(out.instrs)?;
    let stats = sim.run(&program)?;
    let vals = regroup_passes(&read_records(sim.read_log(), owner.len(), d)?, &passes, d);
    Ok(PimRun {
        out: merge_records(&vals, &owner, g, d),
        stats,
        program,
        host_bytes,
    })
}

/// [`scalar_head_on_pim`] over one head of the KIVI store (its encoded
/// tokens as `bits`-bit codes in groups of `group`, [`ScalarScale::MinScale`],
/// and its FP16 sinks and recent window): the witness that the lowered
/// programs compute what `scalar_head_attention` does.
pub fn kivi_head_on_pim(
    device: &Device,
    view: &ScalarHeadView<'_>,
    bits: u32,
    group: usize,
    queries: &[f32],
    slices: usize,
) -> Result<PimRun> {
    let f = |x: &[f16]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (k, v) in view
        .sink_keys
        .iter()
        .zip(view.sink_values.iter())
        .chain(view.recent_keys.iter().zip(view.recent_values.iter()))
    {
        keys.extend(f(k));
        values.extend(f(v));
    }
    let (key_params, value_params) = (
        raw_f16_bytes(view.key_params),
        raw_f16_bytes(view.value_params),
    );
    let head = ScalarHead {
        codes: ScalarCodes {
            bits,
            group,
            scale: ScalarScale::MinScale,
        },
        head_dim: view.sink_keys.head_dim(),
        key_codes: view.key_codes,
        key_params: &key_params,
        value_codes: view.value_codes,
        value_params: &value_params,
    };
    scalar_head_on_pim(device, &head, &keys, &values, queries, slices)
}
