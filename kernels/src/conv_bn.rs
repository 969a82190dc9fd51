//! Train-mode convolution + BatchNorm (+ReLU) as one graph node.
//!
//! As two nodes, the convolution's output is a tensor of the graph, and
//! candle's autograd gives its gradient the treatment of every node's: a fresh
//! zeroed tensor (a serial `memset`) plus an add, after BatchNorm's backward has
//! written that gradient out in full, for the convolution's backward to read it
//! back twice (input and kernel gradients). Fused, the backward pass makes each
//! image's BatchNorm input gradient in a per-thread buffer, in cache, and feeds
//! it straight to both convolution gradients. A max-pooling after the
//! BatchNorm (then ReLU) is fused too: its full-resolution input is made per
//! image in cache, in the forward pass and again in the backward pass, and
//! never stored.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::{
    BatchStats, BnGrad, DataGrad, FilterGrad, FilterScratch, batch_norm_train, bn_affine,
    bn_forward, bn_param_grads, conv_forward, conv_geom, conv2d_maybe_bias, dims4, lock,
    max_pool2_relu, num_threads, owned_part, par_ranges, ranges, slice, sum_parts, use_fast_path,
};

/// What follows the BatchNorm in [`conv_bn_train`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnThen {
    /// Nothing.
    Nothing,
    /// ReLU.
    Relu,
    /// 2x2 max-pooling with stride 2, then ReLU.
    PoolRelu,
}

/// Train-mode `then(batch_norm(conv(x, w) [+ bias]))`: convolution of `x`
/// `(N, C, H, W)` with `w` `(O, C, k, k)` (`stride`, `pad`), BatchNorm with the
/// batch statistics, `gamma` and `beta`, then ReLU or max-pooling + ReLU.
/// Returns the output and the statistics used (for the moving averages); the
/// same values and gradients as [`conv2d_maybe_bias`], [`batch_norm_train`]
/// and [`max_pool2_relu`] in a row, which it runs on other devices and dtypes.
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    (stride, pad): (usize, usize),
    eps: f64,
    then: BnThen,
) -> Result<(Tensor, BatchStats)> {
    let mut args = vec![x, w, gamma, beta];
    args.extend(bias);
    if !use_fast_path(&args) {
        let z = conv2d_maybe_bias(x, w, bias, stride, pad)?;
        let (y, stats) = batch_norm_train(&z, gamma, beta, eps, then == BnThen::Relu)?;
        if then == BnThen::PoolRelu {
            return Ok((max_pool2_relu(&y)?, stats));
        }
        return Ok((y, stats));
    }
    // One tensor for the per-channel parameters, as a custom op takes three
    // arguments; `cat`'s backward hands each its part of the gradient.
    let mut params = vec![gamma.clone(), beta.clone()];
    params.extend(bias.cloned());
    let params = Tensor::cat(&params, 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnOp {
        stride,
        pad,
        eps,
        then,
        bias: bias.is_some(),
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &params, op)?;
    let stats = match lock(&saved)?.as_ref() {
        Some(s) => s.stats.clone(),
        None => bail!("conv + batch-norm: the forward pass kept no statistics"),
    };
    Ok((y, stats))
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// The convolution's output `(N, O, Ho, Wo)` (BatchNorm's input).
    z: Vec<f32>,
    stats: BatchStats,
}

struct ConvBnOp {
    stride: usize,
    pad: usize,
    eps: f64,
    then: BnThen,
    /// Whether `params` ends with the convolution's bias.
    bias: bool,
    saved: Arc<Mutex<Option<Arc<Saved>>>>,
}

impl ConvBnOp {
    /// Values in `params` for `o` channels: gamma, beta and maybe the bias.
    fn params_len(&self, o: usize) -> usize {
        if self.bias { 3 * o } else { 2 * o }
    }
}

impl CustomOp3 for ConvBnOp {
    fn name(&self) -> &'static str {
        "fast-conv-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, params) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let o = dims4(l2, "conv2d kernel")?.0;
        if params.len() != self.params_len(o) {
            bail!(
                "conv + batch-norm: {o} channels but {} per-channel parameters",
                params.len()
            );
        }
        let (gamma, beta) = (&params[..o], &params[o..2 * o]);
        let bias = self.bias.then(|| &params[2 * o..]);
        let (z, [n, _, ho, wo]) = conv_forward(x, l1, w, l2, bias, (self.stride, self.pad))?;
        let (y, stats) = bn_forward(&z, gamma, beta, [n, o, ho, wo], self.eps, self.then);
        let shape = match self.then {
            BnThen::PoolRelu => Shape::from((n, o, ho / 2, wo / 2)),
            _ => Shape::from((n, o, ho, wo)),
        };
        *lock(&self.saved)? = Some(Arc::new(Saved { z, stats }));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = lock(&self.saved)?.clone() else {
            bail!("conv + batch-norm: backward before forward");
        };
        let o = w.dim(0)?;
        let gamma: Vec<f32> = params.narrow(0, 0, o)?.to_vec1()?;
        let affine = if self.then == BnThen::PoolRelu {
            let beta: Vec<f32> = params.narrow(0, o, o)?.to_vec1()?;
            Some(bn_affine(&gamma, &beta, &saved.stats, self.eps))
        } else {
            None
        };
        // Under pooling, the pooling's backward applies the ReLU mask.
        let relu = self.then == BnThen::Relu;
        let op = ConvBnBwd {
            stride: self.stride,
            pad: self.pad,
            w: w.flatten_all()?.to_vec1()?,
            wdims: w.dims4()?,
            bn: BnGrad::new(gamma, saved.stats.clone(), self.eps, relu),
            affine,
            params_len: self.params_len(o),
            bias: self.bias,
            need_dx: x.track_op(),
            saved,
        };
        let packed = x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let dx_len = if op.need_dx { x.elem_count() } else { 0 };
        let dx = if op.need_dx {
            Some(packed.narrow(0, 0, dx_len)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = owned_part(&packed, dx_len, w.elem_count())?.reshape(w.shape())?;
        let dparams = owned_part(&packed, dx_len + w.elem_count(), op.params_len)?;
        Ok((dx, Some(dw), Some(dparams)))
    }
}

/// The fused backward pass `(x, y, dy) -> [dx..., dw..., dparams...]`, `dx`
/// only when `x` needs it.
struct ConvBnBwd {
    stride: usize,
    pad: usize,
    w: Vec<f32>,
    wdims: (usize, usize, usize, usize),
    bn: BnGrad,
    /// With pooling: BatchNorm's `(scale, shift)`, to remake its output.
    affine: Option<(Vec<f32>, Vec<f32>)>,
    params_len: usize,
    bias: bool,
    need_dx: bool,
    saved: Arc<Saved>,
}

impl CustomOp3 for ConvBnBwd {
    fn name(&self) -> &'static str {
        "fast-conv-batchnorm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let xd = dims4(l1, "conv2d input")?;
        let g = conv_geom(xd, self.wdims, self.stride, self.pad)?;
        let (n, o, hw) = (xd.0, self.wdims.0, g.col_cols());
        let (in_size, out_size) = (g.c * g.h * g.w, o * hw);
        let y_size = match self.affine {
            Some(_) => o * (g.ho() / 2) * (g.wo() / 2),
            None => out_size,
        };
        let z = &self.saved.z;
        if z.len() != n * out_size || y.len() != n * y_size || dy.len() != y.len() {
            bail!("conv + batch-norm backward: output sizes do not match");
        }
        let up = Upstream {
            z,
            y,
            dy,
            sizes: (out_size, y_size),
            geom: (o, g.ho(), g.wo()),
            affine: self.affine.as_ref(),
        };
        let partial_sums: Vec<Vec<(f64, f64)>> = ranges(n, num_threads())
            .into_par_iter()
            .map(|r| {
                let (mut acc, mut bufs) = (vec![(0f64, 0f64); o], Default::default());
                for i in r {
                    self.bn.add_sums(up.planes(i, &mut bufs), &mut acc);
                }
                acc
            })
            .collect();
        let mut sums = vec![(0f64, 0f64); o];
        for part in partial_sums {
            for ((a, b), (pa, pb)) in sums.iter_mut().zip(part) {
                *a += pa;
                *b += pb;
            }
        }
        let data = self.need_dx.then(|| DataGrad::new(&self.w, o, g));
        let filter = FilterGrad::new(g, o);
        let dx_size = if self.need_dx { in_size } else { 0 };
        let count = (n * hw) as f64;
        let tail = filter.len() + self.params_len;
        let (mut out, parts) = par_ranges(n, dx_size, tail, |r, dx| {
            let (mut dw, mut db) = (vec![0f32; filter.len()], vec![0f64; o]);
            let (mut dz, mut fs, mut ds) =
                (vec![0f32; out_size], FilterScratch::default(), Vec::new());
            let mut bufs = Default::default();
            for (k, i) in r.enumerate() {
                self.bn
                    .image(up.planes(i, &mut bufs), &sums, count, &mut dz);
                if self.bias {
                    for (d, plane) in db.iter_mut().zip(dz.chunks_exact(hw)) {
                        *d += f64::from(slice::sum(plane));
                    }
                }
                if let Some(data) = &data {
                    data.image(&dz, &mut ds, &mut dx[k * in_size..(k + 1) * in_size]);
                }
                filter.image(&x[i * in_size..(i + 1) * in_size], &dz, &mut fs, &mut dw);
            }
            (dw, db)
        });
        let (dws, dbs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        let tail = &mut out[n * dx_size..];
        tail[..filter.len()].copy_from_slice(&sum_parts(filter.len(), dws));
        let dparams = &mut tail[filter.len()..];
        bn_param_grads(&sums, &mut dparams[..2 * o]);
        if self.bias {
            for (ch, d) in dparams[2 * o..].iter_mut().enumerate() {
                *d = dbs.iter().map(|db| db[ch]).sum::<f64>() as f32;
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The BatchNorm input, output and output gradient of the batch.
struct Upstream<'a> {
    z: &'a [f32],
    y: &'a [f32],
    dy: &'a [f32],
    /// Values per image of `z` and of `y`.
    sizes: (usize, usize),
    /// Channels and full-resolution plane size.
    geom: (usize, usize, usize),
    /// With pooling: BatchNorm's `(scale, shift)`.
    affine: Option<&'a (Vec<f32>, Vec<f32>)>,
}

impl Upstream<'_> {
    /// Image `i`'s `(z, y, dy)` at full resolution: under pooling, `y` and
    /// `dy` are remade in `bufs` (BatchNorm's output, and the pooling's
    /// gradient, ReLU mask applied).
    fn planes<'b>(
        &'b self,
        i: usize,
        bufs: &'b mut (Vec<f32>, Vec<f32>),
    ) -> (&'b [f32], &'b [f32], &'b [f32]) {
        let ((zs, ys), (o, h, w)) = (self.sizes, self.geom);
        let zi = &self.z[i * zs..(i + 1) * zs];
        let (yi, dyi) = (
            &self.y[i * ys..(i + 1) * ys],
            &self.dy[i * ys..(i + 1) * ys],
        );
        let Some((scale, shift)) = self.affine else {
            return (zi, yi, dyi);
        };
        let (full, grad) = bufs;
        full.resize(zs, 0.0);
        grad.resize(zs, 0.0);
        slice::affine_channels(zi, scale, shift, 1, o, h * w, false, full);
        slice::maxpool2_backward(full, dyi, Some(yi), o, h, w, grad);
        (zi, full, grad)
    }
}
