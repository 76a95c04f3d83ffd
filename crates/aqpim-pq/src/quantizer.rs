//! [`ProductQuantizer`]: training, encoding and decoding.

use rayon::prelude::*;

use crate::error::{PqError, Result};
use crate::kmeans::{kmeans_centroids, Init, KMeansOptions};
use crate::lut::Lut;
use crate::nearest::CentroidTable;
use crate::params::PqParams;

/// Options of product-quantizer training (one k-means per subspace).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Lloyd iterations per subspace, default 25.
    pub iterations: usize,
    /// Seed; subspace `m` uses a seed derived from it and `m`, so the result
    /// does not depend on how subspaces are spread over threads.
    pub seed: u64,
    /// Initialization. `Init::Precomputed` holds a whole codebook
    /// (`M * ksub * dsub` values, the layout of [`ProductQuantizer::centroids`]).
    pub init: Init,
    /// Sampling cap per centroid (default 256, as faiss).
    pub max_points_per_centroid: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        let k = KMeansOptions::default();
        TrainOptions {
            iterations: k.iterations,
            seed: k.seed,
            init: k.init,
            max_points_per_centroid: k.max_points_per_centroid,
        }
    }
}

/// A trained product quantizer.
///
/// `centroids` holds `M * ksub * dsub` values, row-major: centroid `j` of
/// subspace `m` is `centroids[(m * ksub + j) * dsub ..][..dsub]`.
#[derive(Debug, Clone)]
pub struct ProductQuantizer {
    params: PqParams,
    centroids: Vec<f32>,
    /// One prepared search table per subspace, derived from `centroids`.
    tables: Vec<CentroidTable>,
}

impl PartialEq for ProductQuantizer {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params && self.centroids == other.centroids
    }
}

impl ProductQuantizer {
    /// Builds a quantizer from a codebook (`M * ksub * dsub` finite values).
    pub fn from_centroids(params: PqParams, centroids: Vec<f32>) -> Result<Self> {
        if centroids.len() != params.codebook_len() {
            return Err(PqError::shape(
                "codebook",
                format!("M * ksub * dsub = {} values", params.codebook_len()),
                format!("{} values", centroids.len()),
            ));
        }
        crate::check_finite(&centroids, params.dsub(), "codebook")?;
        let (ksub, dsub) = (params.ksub(), params.dsub());
        let tables = centroids
            .chunks_exact(ksub * dsub)
            .map(|c| CentroidTable::new(c, dsub, ksub))
            .collect();
        Ok(ProductQuantizer {
            params,
            centroids,
            tables,
        })
    }

    /// Trains one k-means per subspace on `data` (`n * d` values, row-major),
    /// in parallel over subspaces on the current rayon pool.
    pub fn train(params: PqParams, data: &[f32], opts: &TrainOptions) -> Result<Self> {
        Self::train_impl(params, data, None, opts)
    }

    /// Weighted training: sample `i` counts `weights[i]` times in every
    /// subspace's objective (for attention-aware objectives).
    pub fn train_weighted(
        params: PqParams,
        data: &[f32],
        weights: &[f32],
        opts: &TrainOptions,
    ) -> Result<Self> {
        Self::train_impl(params, data, Some(weights), opts)
    }

    fn train_impl(
        params: PqParams,
        data: &[f32],
        weights: Option<&[f32]>,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let (d, m_count, dsub, ksub) = (
            params.dim(),
            params.num_subspaces(),
            params.dsub(),
            params.ksub(),
        );
        let n = check_matrix(data, d, "training data")?;
        if n < ksub {
            return Err(PqError::TooFewPoints {
                needed: ksub,
                got: n,
            });
        }
        if n < 39 * ksub {
            tracing::warn!(
                n,
                ksub,
                "fewer than 39 training points per centroid; codebooks may be poor"
            );
        }
        if let Init::Precomputed(c) = &opts.init {
            if c.len() != params.codebook_len() {
                return Err(PqError::shape(
                    "initial codebook",
                    params.codebook_len(),
                    c.len(),
                ));
            }
        }
        let per_sub: Vec<Vec<f32>> = (0..m_count)
            .into_par_iter()
            .map(|m| -> Result<Vec<f32>> {
                let sub = subspace_points(data, d, dsub, m);
                let init = match &opts.init {
                    Init::Precomputed(c) => {
                        Init::Precomputed(c[m * ksub * dsub..(m + 1) * ksub * dsub].to_vec())
                    }
                    other => other.clone(),
                };
                let kopts = KMeansOptions {
                    iterations: opts.iterations,
                    seed: subspace_seed(opts.seed, m),
                    init,
                    max_points_per_centroid: opts.max_points_per_centroid,
                };
                kmeans_centroids(&sub, dsub, ksub, weights, &kopts)
            })
            .collect::<Result<_>>()?;
        Self::from_centroids(params, per_sub.concat())
    }

    /// The quantizer's shape.
    pub fn params(&self) -> PqParams {
        self.params
    }
    /// The codebook: `M * ksub * dsub` values, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// The `ksub * dsub` centroids of subspace `m`, row-major.
    pub fn subspace_centroids(&self, m: usize) -> &[f32] {
        let len = self.params.ksub() * self.params.dsub();
        &self.centroids[m * len..(m + 1) * len]
    }

    /// `out[t] += sum_j weights[j] C[m][j][t]`: the weighted sum of subspace
    /// `m`'s centroids (`weights`: `ksub`, `out`: `dsub`), as attention on
    /// codes needs it to turn per-centroid weights into a value. The order of
    /// the additions is not that of a plain loop over `j`.
    pub fn add_weighted_centroids(&self, m: usize, weights: &[f32], out: &mut [f32]) -> Result<()> {
        let (ksub, dsub) = (self.params.ksub(), self.params.dsub());
        let Some(table) = self.tables.get(m) else {
            return Err(PqError::shape(
                "subspace index",
                format!("< {}", self.params.num_subspaces()),
                m,
            ));
        };
        if weights.len() != ksub || out.len() != dsub {
            return Err(PqError::shape(
                "weighted centroids",
                format!("{ksub} weights and {dsub} outputs"),
                format!("{} and {}", weights.len(), out.len()),
            ));
        }
        table.add_weighted_sum(weights, out);
        Ok(())
    }

    /// Moves the centroids that `codes` name to the mean of what they encode:
    /// for every vector of `data` (`n * d`, the vectors `codes` encode, `n *
    /// M` codes one per byte) and subspace `m`, centroid `j = code` becomes
    /// `c + (x - c) / w`, where `w = counts[m * ksub + j] + 1` becomes its
    /// new count. A centroid that started as `c0` with count `w0` is then
    /// `(w0 c0 + sum x) / (w0 + n_j)`, the mean of its prior and of the
    /// `n_j` vectors assigned to it (online k-means with a prior, MacQueen's
    /// update). Vectors are taken in order, so the result does not depend
    /// on how they were batched. With `round_f16`, each moved centroid is
    /// rounded to FP16 (for FP16 codebooks).
    pub fn refine(
        &mut self,
        data: &[f32],
        codes: &[u8],
        counts: &mut [f32],
        round_f16: bool,
    ) -> Result<()> {
        let (d, m_all) = (self.params.dim(), self.params.num_subspaces());
        let (ksub, dsub) = (self.params.ksub(), self.params.dsub());
        let n = check_matrix(data, d, "vectors to refine with")?;
        if codes.len() != n * m_all || counts.len() != m_all * ksub {
            return Err(PqError::shape(
                "refinement",
                format!("{} codes and {} counts", n * m_all, m_all * ksub),
                format!("{} and {}", codes.len(), counts.len()),
            ));
        }
        if let Some(&bad) = codes.iter().find(|&&c| usize::from(c) >= ksub) {
            return Err(PqError::shape("code", format!("< {ksub}"), bad));
        }
        for (x, row) in data.chunks_exact(d).zip(codes.chunks_exact(m_all)) {
            for (m, &code) in row.iter().enumerate() {
                let j = usize::from(code);
                let w = &mut counts[m * ksub + j];
                *w += 1.0;
                let step = 1.0 / *w;
                let at = (m * ksub + j) * dsub;
                let c = &mut self.centroids[at..at + dsub];
                for (cv, &xv) in c.iter_mut().zip(&x[m * dsub..(m + 1) * dsub]) {
                    *cv += (xv - *cv) * step;
                    if round_f16 {
                        *cv = half::f16::from_f32(*cv).to_f32();
                    }
                }
                self.tables[m].set(j, c);
            }
        }
        Ok(())
    }

    /// Encodes `data` (`n * d` values) into `n * M` codes, one byte each,
    /// row-major. Runs in parallel over blocks of rows on the current rayon pool.
    pub fn encode(&self, data: &[f32]) -> Result<Vec<u8>> {
        let n = check_matrix(data, self.params.dim(), "vectors to encode")?;
        let mut codes = vec![0u8; n * self.params.num_subspaces()];
        self.encode_into_unchecked(data, &mut codes);
        Ok(codes)
    }

    /// Encodes `data` into `codes` (`n * M` bytes), without allocating.
    pub fn encode_into(&self, data: &[f32], codes: &mut [u8]) -> Result<()> {
        let n = check_matrix(data, self.params.dim(), "vectors to encode")?;
        if codes.len() != n * self.params.num_subspaces() {
            return Err(PqError::shape(
                "encode_into codes",
                n * self.params.num_subspaces(),
                codes.len(),
            ));
        }
        self.encode_into_unchecked(data, codes);
        Ok(())
    }

    fn encode_into_unchecked(&self, data: &[f32], codes: &mut [u8]) {
        const BLOCK: usize = 256;
        let (d, m_count) = (self.params.dim(), self.params.num_subspaces());
        data.par_chunks(BLOCK * d)
            .zip(codes.par_chunks_mut(BLOCK * m_count))
            .for_each(|(rows, out)| self.encode_block(rows, out));
    }

    fn encode_block(&self, rows: &[f32], out: &mut [u8]) {
        let (d, m_count, dsub) = (
            self.params.dim(),
            self.params.num_subspaces(),
            self.params.dsub(),
        );
        let n = rows.len() / d;
        let mut idx = vec![0u32; n];
        let mut dist = vec![0f32; n];
        for m in 0..m_count {
            let sub = subspace_points(rows, d, dsub, m);
            self.tables[m].assign(&sub, &mut idx, &mut dist);
            for (i, &j) in idx.iter().enumerate() {
                out[i * m_count + m] = j as u8;
            }
        }
    }

    /// Encodes one vector `x` (`d` values) into `codes` (`M` bytes). The
    /// decode-time hot path: one nearest-centroid search per subspace.
    pub fn encode_one(&self, x: &[f32], codes: &mut [u8]) -> Result<()> {
        check_matrix(x, self.params.dim(), "vector to encode")?;
        if x.len() != self.params.dim() || codes.len() != self.params.num_subspaces() {
            return Err(PqError::shape(
                "encode_one",
                format!(
                    "{} values and {} codes",
                    self.params.dim(),
                    self.params.num_subspaces()
                ),
                format!("{} values and {} codes", x.len(), codes.len()),
            ));
        }
        let dsub = self.params.dsub();
        let (mut idx, mut dist) = ([0u32], [0f32]);
        for (m, sub) in x.chunks_exact(dsub).enumerate() {
            self.tables[m].assign(sub, &mut idx, &mut dist);
            codes[m] = idx[0] as u8;
        }
        Ok(())
    }

    /// Decodes `n * M` codes into `n * d` values (each sub-vector replaced by its centroid).
    pub fn decode(&self, codes: &[u8]) -> Result<Vec<f32>> {
        let m_count = self.params.num_subspaces();
        if !codes.len().is_multiple_of(m_count) {
            return Err(PqError::shape(
                "decode",
                format!("a multiple of M = {m_count} codes"),
                codes.len(),
            ));
        }
        let mut out = vec![0f32; codes.len() / m_count * self.params.dim()];
        self.decode_into(codes, &mut out)?;
        Ok(out)
    }

    /// Decodes into `out` (`n * d` values). Codes `>= ksub` are an error.
    pub fn decode_into(&self, codes: &[u8], out: &mut [f32]) -> Result<()> {
        let (m_count, dsub, ksub) = (
            self.params.num_subspaces(),
            self.params.dsub(),
            self.params.ksub(),
        );
        if !codes.len().is_multiple_of(m_count)
            || out.len() != codes.len() / m_count * self.params.dim()
        {
            return Err(PqError::shape(
                "decode_into",
                format!(
                    "n * M codes and n * d outputs (M = {m_count}, d = {})",
                    self.params.dim()
                ),
                format!("{} codes and {} outputs", codes.len(), out.len()),
            ));
        }
        for (i, (row, o)) in codes
            .chunks_exact(m_count)
            .zip(out.chunks_exact_mut(self.params.dim()))
            .enumerate()
        {
            for (m, (&c, os)) in row.iter().zip(o.chunks_exact_mut(dsub)).enumerate() {
                if usize::from(c) >= ksub {
                    return Err(PqError::CodeOutOfRange {
                        row: i,
                        subspace: m,
                        code: c,
                        ksub,
                    });
                }
                let base = (m * ksub + usize::from(c)) * dsub;
                os.copy_from_slice(&self.centroids[base..base + dsub]);
            }
        }
        Ok(())
    }

    /// Inner-product lookup table of a query `q` (`d` values):
    /// `T[m][j] = q_m . C[m][j]`, so that `q . decode(code) = sum_m T[m][code[m]]`.
    pub fn inner_product_table(&self, q: &[f32]) -> Result<Lut> {
        self.check_query(q)?;
        let (dsub, ksub) = (self.params.dsub(), self.params.ksub());
        let mut values = vec![0f32; self.params.num_subspaces() * ksub];
        for ((qm, out), table) in q
            .chunks_exact(dsub)
            .zip(values.chunks_exact_mut(ksub))
            .zip(&self.tables)
        {
            table.inner_products(qm, out);
        }
        Lut::new(self.params.num_subspaces(), ksub, values)
    }

    /// Squared-L2 lookup table: `T[m][j] = |q_m - C[m][j]|^2`, so that
    /// `|q - decode(code)|^2 = sum_m T[m][code[m]]`.
    pub fn l2_table(&self, q: &[f32]) -> Result<Lut> {
        self.table(q, |a, b| {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
        })
    }

    /// A lookup-table query has `d` finite values.
    fn check_query(&self, q: &[f32]) -> Result<()> {
        if q.len() != self.params.dim() {
            return Err(PqError::shape(
                "lookup table query",
                self.params.dim(),
                q.len(),
            ));
        }
        crate::check_finite(q, q.len(), "query")
    }

    fn table(&self, q: &[f32], f: impl Fn(&[f32], &[f32]) -> f32) -> Result<Lut> {
        self.check_query(q)?;
        let (dsub, ksub) = (self.params.dsub(), self.params.ksub());
        let mut values = Vec::with_capacity(self.params.num_subspaces() * ksub);
        for (m, qm) in q.chunks_exact(dsub).enumerate() {
            values.extend(
                self.subspace_centroids(m)
                    .chunks_exact(dsub)
                    .map(|c| f(qm, c)),
            );
        }
        Lut::new(self.params.num_subspaces(), ksub, values)
    }

    /// Mean squared reconstruction error per vector, `mean_i |x_i - decode(encode(x_i))|^2`.
    pub fn mse_per_vector(&self, data: &[f32]) -> Result<f64> {
        let n = check_matrix(data, self.params.dim(), "vectors")?;
        let codes = self.encode(data)?;
        let rec = self.decode(&codes)?;
        let se: f64 = data
            .iter()
            .zip(&rec)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        Ok(se / n.max(1) as f64)
    }
}

/// Validates a row-major matrix of `d` columns: whole rows, finite values.
/// Returns the number of rows.
fn check_matrix(data: &[f32], d: usize, what: &'static str) -> Result<usize> {
    if !data.len().is_multiple_of(d) {
        return Err(PqError::shape(
            what,
            format!("a multiple of d = {d} values"),
            format!("{} values", data.len()),
        ));
    }
    crate::check_finite(data, d, what)?;
    Ok(data.len() / d)
}

/// Copies sub-vector `m` of every row into a contiguous `n * dsub` buffer.
fn subspace_points(data: &[f32], d: usize, dsub: usize, m: usize) -> Vec<f32> {
    let mut sub = Vec::with_capacity(data.len() / d * dsub);
    for row in data.chunks_exact(d) {
        sub.extend_from_slice(&row[m * dsub..(m + 1) * dsub]);
    }
    sub
}

/// Seed of subspace `m`: a fixed mix of the run's seed and `m`.
fn subspace_seed(seed: u64, m: usize) -> u64 {
    seed ^ (m as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
