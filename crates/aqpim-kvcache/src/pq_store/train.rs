//! Codebooks and pre-transforms of a [`PqStore`]: fit online on a layer's
//! tokens ([`PqStore::train_layer`]) or supplied from calibration
//! ([`PqStore::set_codebooks`], [`PqStore::set_transforms`]), and the
//! pre-transform a spec asks for ([`fit_transform`]).

use aqpim_pq::transform::PreTransform;
use aqpim_pq::transform::{channel_mean, matmul, permutation_matrix, sym_sqrt};
use aqpim_pq::{PqParams, ProductQuantizer, TrainOptions};

use super::{PqStore, PARTS};
use crate::error::{KvError, KvPart, Result};
use crate::spec::{KeyMetric, KvSpec, PqSpec};
use crate::tokens::{extend_f32, round_f16};

/// The pre-transform that `spec` asks for on `part` (`None`: identity), fit
/// to `data` (`n x d` training rows): `x' = P M (x - mu)` with `mu` the mean
/// (`center`), `M` the per-channel `1 / std` (`scale`) or, for keys under
/// `whiten`, the query metric's square root (`diag`: per-channel RMS of the
/// queries, `full`: `S^(1/2)` of `S = E[q q^T]`, which `query_moment` holds,
/// `d x d` row-major), and `P` the subspace layout's permutation. Without a
/// full metric `P M` is monomial and held compactly (a permutation and a
/// diagonal, see [`PreTransform::monomial`]); with one, dense.
pub fn fit_transform(
    spec: &PqSpec,
    part: KvPart,
    data: &[f32],
    d: usize,
    query_moment: Option<&[f64]>,
) -> Result<Option<PreTransform>> {
    if !spec.transforms(part) {
        return Ok(None);
    }
    let dsub = spec.params(d, part)?.dsub();
    let mean = if spec.transforms.center {
        channel_mean(data, d, None)
    } else {
        vec![0.0; d]
    };
    let whiten = part == KvPart::Keys && spec.transforms.whiten != KeyMetric::Euclidean;
    // `M` is a diagonal (`scaling`, its entries) or, for a full metric, dense.
    let mut scaling: Option<Vec<f32>> = None;
    let mut dense: Option<Vec<f32>> = None;
    if whiten {
        let s = query_moment.ok_or_else(|| KvError::Incompatible {
            spec: KvSpec::Pq(*spec).to_string(),
            shape: format!("head_dim {d}"),
            reason: "whiten= needs calibration queries (aqpim pq calibrate)".into(),
        })?;
        if s.len() != d * d {
            return Err(KvError::shape("fit_transform", d * d, s.len()));
        }
        match spec.transforms.whiten {
            KeyMetric::QueryDiagonal => {
                let top = (0..d).map(|i| s[i * d + i]).fold(0f64, f64::max).max(1e-30);
                scaling = Some(
                    (0..d)
                        .map(|i| s[i * d + i].max(1e-6 * top).sqrt() as f32)
                        .collect(),
                );
            }
            _ => dense = Some(sym_sqrt(s, d, 1e-6)),
        }
    } else if spec.transforms.scale {
        let mu = channel_mean(data, d, None);
        let sq: Vec<f32> = data
            .iter()
            .zip(mu.iter().cycle())
            .map(|(x, m)| (x - m) * (x - m))
            .collect();
        let var = channel_mean(&sq, d, None);
        let top = var.iter().cloned().fold(0f32, f32::max).max(1e-30);
        scaling = Some(
            var.iter()
                .map(|&v| 1.0 / v.max(1e-6 * top).sqrt())
                .collect(),
        );
    }
    let layout = (spec.transforms.layout != crate::spec::SubspaceLayout::Contiguous)
        .then(|| spec.transforms.layout.permutation(d, dsub));
    let xf = match (dense, scaling, layout) {
        (None, None, None) => PreTransform::new(mean, None)?,
        (Some(m), _, None) => PreTransform::new(mean, Some(m))?,
        (Some(m), _, Some(p)) => {
            PreTransform::new(mean, Some(matmul(&permutation_matrix(&p), &m, d)))?
        }
        // `P M` with `M` diagonal is monomial: row `i` holds `M[perm[i]]`
        // at column `perm[i]`, held as the permutation and that diagonal.
        (None, scaling, layout) => {
            let perm = layout.unwrap_or_else(|| (0..d).collect());
            let diag = match &scaling {
                Some(m) => perm.iter().map(|&j| m[j]).collect(),
                None => vec![1.0; d],
            };
            let perm = perm
                .into_iter()
                .map(|j| {
                    u16::try_from(j)
                        .map_err(|_| KvError::shape("fit_transform", "head_dim <= 65536", d))
                })
                .collect::<Result<Vec<u16>>>()?;
            PreTransform::monomial(mean, perm, diag)?
        }
    };
    Ok(Some(xf))
}

/// Rounds a codebook's centroids to FP16 (`cb16=true`).
fn round_codebook(pq: ProductQuantizer) -> Result<ProductQuantizer> {
    let c = round_f16(pq.centroids());
    Ok(ProductQuantizer::from_centroids(pq.params(), c)?)
}

impl PqStore {
    /// Supplies calibrated pre-transforms for the group of `(layer, head)`
    /// (with [`PqStore::set_codebooks`]; `None` is the identity). Errors if
    /// their dimension is not `head_dim` or if the group already encoded tokens.
    pub fn set_transforms(
        &mut self,
        layer: usize,
        head: usize,
        keys: Option<PreTransform>,
        values: Option<PreTransform>,
    ) -> Result<()> {
        self.shape.check_head(layer, head)?;
        let d = self.shape.head_dim();
        for t in [&keys, &values].into_iter().flatten() {
            if t.dim() != d {
                return Err(KvError::shape("set_transforms", d, t.dim()));
            }
        }
        let g = self.unused_group(layer, head)?;
        self.transforms[0][g] = keys;
        self.transforms[1][g] = values;
        Ok(())
    }

    /// The codebook group of `(layer, head)`, refused when its codebooks
    /// already encoded tokens (supplied codebooks and transforms replace
    /// a group's before it encodes anything).
    fn unused_group(&self, layer: usize, head: usize) -> Result<usize> {
        let g = self.pq.training.share.group_of(&self.shape, layer, head);
        let in_use = self.group_encoded(g);
        if in_use > 0 {
            return Err(KvError::CodebookInUse {
                part: KvPart::Keys,
                layer,
                head,
                tokens: in_use,
            });
        }
        Ok(g)
    }

    /// Encoded tokens of every layer using codebook group `g`.
    pub(super) fn group_encoded(&self, g: usize) -> usize {
        (0..self.shape.num_layers())
            .filter(|&l| {
                (0..self.shape.num_kv_heads())
                    .any(|h| self.pq.training.share.group_of(&self.shape, l, h) == g)
            })
            .map(|l| self.layers[l].regions.encoded)
            .sum()
    }

    /// Supplies calibrated codebooks for the group of `(layer, head)` (every
    /// pair sharing them, under `share`). Errors if their shape differs from
    /// the spec's, or if the group's current codebooks already encoded tokens.
    pub fn set_codebooks(
        &mut self,
        layer: usize,
        head: usize,
        keys: ProductQuantizer,
        values: ProductQuantizer,
    ) -> Result<()> {
        self.shape.check_head(layer, head)?;
        let c = self.class(layer);
        for (p, pq) in [&keys, &values].into_iter().enumerate() {
            if pq.params() != self.params[c][p] {
                let show = |x: PqParams| {
                    format!(
                        "d = {}, M = {}, nbits = {}",
                        x.dim(),
                        x.num_subspaces(),
                        x.nbits()
                    )
                };
                return Err(KvError::CodebookShape {
                    part: PARTS[p],
                    layer,
                    head,
                    expected: show(self.params[c][p]),
                    got: show(pq.params()),
                });
            }
        }
        let g = self.unused_group(layer, head)?;
        let (keys, values) = if self.pq.training.fp16_codebooks {
            (round_codebook(keys)?, round_codebook(values)?)
        } else {
            (keys, values)
        };
        self.codebooks[0][g] = Some(keys);
        self.codebooks[1][g] = Some(values);
        Ok(())
    }

    /// Whether every head of `layer` has both codebooks.
    pub(super) fn layer_ready(&self, layer: usize) -> bool {
        (0..self.shape.num_kv_heads()).all(|h| {
            let g = self.pq.training.share.group_of(&self.shape, layer, h);
            self.codebooks[0][g].is_some() && self.codebooks[1][g].is_some()
        })
    }

    /// Trains the missing codebooks of `layer`'s groups on every token the
    /// layer holds plus the `n` new ones (`keys`, `values`: `H x n x d`).
    pub(super) fn train_layer(
        &mut self,
        layer: usize,
        keys: &[f32],
        values: &[f32],
        n: usize,
    ) -> Result<()> {
        let (h_count, d) = (self.shape.num_kv_heads(), self.shape.head_dim());
        if self.pq.needs_calibration() {
            return Err(KvError::Incompatible {
                spec: self.spec.to_string(),
                shape: self.shape.to_string(),
                reason: "whiten= and vweight= need calibrated codebooks (aqpim pq calibrate); online training cannot use them".into(),
            });
        }
        let share = self.pq.training.share;
        let mut groups: Vec<usize> = (0..h_count)
            .map(|h| share.group_of(&self.shape, layer, h))
            .collect();
        groups.dedup();
        for g in groups {
            for p in 0..2 {
                if self.codebooks[p][g].is_some() {
                    continue;
                }
                let input = if p == 0 { keys } else { values };
                let mut data = Vec::new();
                for h in (0..h_count).filter(|&h| share.group_of(&self.shape, layer, h) == g) {
                    let head = &self.layers[layer].heads[h];
                    extend_f32(&mut data, &head.sinks[p]);
                    data.extend(head.recent[p].slices().to_f32());
                    data.extend(round_f16(&input[h * n * d..(h + 1) * n * d]));
                }
                let opts = TrainOptions {
                    iterations: self.pq.training.iterations,
                    seed: self.pq.training.seed
                        ^ ((2 * g + p + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..TrainOptions::default()
                };
                let xf = fit_transform(&self.pq, PARTS[p], &data, d, None)?;
                let data = match &xf {
                    Some(t) => t.apply(&data)?,
                    None => data,
                };
                let c = self.class(layer);
                let mut pq = ProductQuantizer::train(self.params[c][p], &data, &opts)?;
                if self.pq.training.fp16_codebooks {
                    pq = round_codebook(pq)?;
                }
                self.codebooks[p][g] = Some(pq);
                self.transforms[p][g] = xf;
            }
        }
        Ok(())
    }
}
