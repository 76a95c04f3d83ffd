//! The banks' view of a cache spec: the [`PimKind`] a `dense` or `pq:` spec
//! maps to, and how a cache of `ctx` tokens splits into FP16 tokens beside
//! the codes and tokens held in that kind's format. `aqpim attn sim` and the
//! system model both read a spec through [`BankFormat::of`].

use aqpim_kvcache::{KvPart, KvSpec, PqSpec, Regions};
use aqpim_pq::CodeFormat;

use crate::error::{AttnError, Result};
use crate::pim::PimKind;

/// Bits per code of the LUT units' code columns (`aqpim_pim::CodeBits`):
/// the widths a PQ cache is lowered to PIM programs in
/// ([`BankFormat::require_column_bits`]).
pub const PIM_CODE_BITS: [u32; 2] = [4, 8];

impl PimKind {
    /// The banks' kind for a `pq:` spec and head size: its key and value
    /// formats, refused unless each divides the head.
    pub fn from_pq_spec(spec: &PqSpec, head_dim: usize) -> Result<PimKind> {
        if let Some(w) = &spec.wide {
            return Err(AttnError::PimFormat(format!(
                "wide_layers={} gives some layers a second code format; the banks are lowered for one format per cache",
                w.layers
            )));
        }
        for part in [KvPart::Keys, KvPart::Values] {
            spec.format(part).params(head_dim)?;
        }
        Ok(PimKind::Pq {
            key: spec.key,
            value: spec.value,
        })
    }
}

/// Bytes of one token's codes of format `f` (head size `head_dim`) as the
/// system model moves them to the banks: codes of up to 4 bits two a byte
/// under `pack=true` (a 4-bit column), one a byte otherwise.
pub fn bank_code_bytes(f: CodeFormat, head_dim: usize) -> usize {
    let m = head_dim / f.dsub.max(1);
    if f.packed && f.nbits <= 4 {
        m.div_ceil(2)
    } else {
        m
    }
}

/// Table entries per subspace in the banks: 16 for codes of up to 4 bits
/// (a 4-bit column), 256 otherwise.
pub fn bank_table_entries(f: CodeFormat) -> usize {
    if f.nbits <= 4 {
        16
    } else {
        256
    }
}

/// A cache of `ctx` tokens as the banks hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankFormat {
    /// What the banks hold per token.
    pub kind: PimKind,
    /// FP16 tokens beside the codes: sinks, the recent window and, for PQ,
    /// the outliers' copies (`outliers=`); 0 for FP16 caches.
    pub fp_tokens: usize,
    /// Tokens held in `kind`'s format (every token for FP16 caches).
    pub encoded: usize,
    /// The cache's regions at `ctx` tokens (`Regions::nominal`).
    pub regions: Regions,
}

impl BankFormat {
    /// Refuses a PQ format whose codes are not 4 or 8 bits wide, the widths
    /// of the LUT units' code columns ([`PIM_CODE_BITS`]), as `aqpim attn
    /// sim` lowers a spec to programs.
    pub fn require_column_bits(&self) -> Result<()> {
        if let PimKind::Pq { key, value } = self.kind {
            for f in [key, value] {
                if !PIM_CODE_BITS.contains(&f.nbits) {
                    return Err(AttnError::PimFormat(format!(
                        "{}-bit codes; the PIM kernels take 4- or 8-bit codes",
                        f.nbits
                    )));
                }
            }
        }
        Ok(())
    }

    /// The banks' format of a cache of `ctx` tokens in `kv` with head size
    /// `head_dim`. Scalar specs are refused: their PIM path (`PimKind::Scalar`)
    /// carries group parameters a spec alone does not place.
    pub fn of(kv: &KvSpec, head_dim: usize, ctx: usize) -> Result<Self> {
        let regions = Regions::nominal(kv, ctx);
        match kv {
            KvSpec::Dense => Ok(BankFormat {
                kind: PimKind::Fp16,
                fp_tokens: 0,
                encoded: ctx,
                regions,
            }),
            KvSpec::Pq(spec) => Ok(BankFormat {
                kind: PimKind::from_pq_spec(spec, head_dim)?,
                fp_tokens: regions.sinks + regions.recent + spec.outlier_budget(regions.encoded),
                encoded: regions.encoded,
                regions,
            }),
            KvSpec::Scalar(_) => Err(AttnError::PimFormat(
                "the PIM kernels hold `fp16` or `pq:` caches, not scalar codes".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pq_specs_map_to_their_formats_and_regions() {
        let kv: KvSpec = "pq:dsub=2,kbits=8,vbits=4,sinks=4,window=128,outliers=5"
            .parse()
            .unwrap();
        let b = BankFormat::of(&kv, 128, 4096).unwrap();
        let PimKind::Pq { key, value } = b.kind else {
            panic!("not pq")
        };
        assert_eq!((key.dsub, key.nbits, value.dsub, value.nbits), (2, 8, 2, 4));
        assert_eq!(b.encoded, 4096 - 4 - 128);
        assert_eq!(b.fp_tokens, 4 + 128 + b.encoded * 5 / 1000);
        let dense = BankFormat::of(&KvSpec::Dense, 128, 100).unwrap();
        assert_eq!(
            (dense.kind, dense.fp_tokens, dense.encoded),
            (PimKind::Fp16, 0, 100)
        );
    }

    #[test]
    fn formats_the_banks_do_not_hold_are_refused() {
        for kv in ["pq:dsub=4,nbits=3", "pq:dsub=4,kbits=8,vbits=2"] {
            let kv: KvSpec = kv.parse().unwrap();
            let e = BankFormat::of(&kv, 128, 1024)
                .unwrap()
                .require_column_bits()
                .unwrap_err()
                .to_string();
            assert!(e.contains("4- or 8-bit"), "{e}");
        }
        let scalar: KvSpec = "scalar:bits=2".parse().unwrap();
        let e = BankFormat::of(&scalar, 128, 1024).unwrap_err().to_string();
        assert!(e.contains("not scalar"), "{e}");
        let kv: KvSpec = "pq:dsub=3,nbits=8".parse().unwrap();
        assert!(BankFormat::of(&kv, 128, 1024).is_err());
        // Two code formats in one cache are not lowered as if one.
        let kv: KvSpec = "pq:dsub=2,nbits=4,wide_layers=3,wide_vbits=8"
            .parse()
            .unwrap();
        let e = BankFormat::of(&kv, 128, 1024).unwrap_err().to_string();
        assert!(e.contains("wide_layers=3"), "{e}");
    }
}
