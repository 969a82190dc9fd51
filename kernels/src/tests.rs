//! Every fast op against candle's stock op: values and gradients, random shapes
//! including odd sizes and batch 1.

use candle_core::{Device, Tensor, Var};

use super::*;

/// A tiny deterministic generator so the shapes and values are reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
    /// Distinct values (no ties), so max-pooling gradients are unambiguous.
    fn distinct(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let offset = self.next() as usize;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7_919 + offset) % n) as f32 / n as f32 - 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (self.next() % 20_001) as f32 / 10_000.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn scale(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0)
}

/// Runs `fast` and `stock` on the same variables, checks outputs and the
/// gradients of `sum(y * r)` for a random `r`.
fn compare(
    rng: &mut Lcg,
    inputs: &[Tensor],
    fast: impl Fn(&[Tensor]) -> Tensor,
    stock: impl Fn(&[Tensor]) -> Tensor,
    what: &str,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fast(&ts);
    let ys = stock(&ts);
    let d = max_diff(&yf, &ys);
    assert!(d <= 1e-4 * scale(&ys), "{what}: forward differs by {d}");
    let r = rng.tensor(ys.dims());
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (&ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let a = gf
            .get(t)
            .unwrap_or_else(|| panic!("{what}: fast op gave no gradient for input {i}"));
        let b = gs.get(t).unwrap();
        let d = max_diff(a, b);
        assert!(
            d <= 2e-4 * scale(b),
            "{what}: gradient of input {i} differs by {d}"
        );
    }
}

#[test]
fn conv2d_matches_stock() {
    let mut rng = Lcg(1);
    let mut cases = vec![
        (1, 1, 48, 48, 8, 3, 1, 1),
        // Odd sizes large enough for the direct kernel gradient.
        (2, 3, 31, 33, 5, 3, 1, 1),
        (1, 16, 24, 24, 16, 1, 1, 0),
        (3, 16, 24, 24, 32, 1, 2, 0),
        // Small planes with whole blocks of 16 channels both ways: the
        // Winograd kernels, forward and input gradient, even and odd planes.
        (2, 16, 6, 6, 32, 3, 1, 1),
        (2, 32, 12, 12, 16, 3, 1, 1),
        (1, 16, 5, 7, 32, 3, 1, 1),
        // Whole blocks of outputs only: the wide kernel forward; then the
        // wide kernel for the input gradient alone (16 inputs, 3 outputs).
        (2, 8, 6, 6, 16, 3, 1, 1),
        (1, 16, 5, 7, 3, 3, 1, 1),
    ];
    for _ in 0..6 {
        let k = if rng.next().is_multiple_of(2) { 1 } else { 3 };
        let stride = rng.range(1, 2);
        let pad = if k == 3 { 1 } else { 0 };
        // candle's stock backward fails on stride 2 with odd sizes (its transposed
        // convolution gets the output size wrong), so stride-2 cases are even.
        let (h, w) = (rng.range(3, 13), rng.range(3, 13));
        let (h, w) = if stride == 2 {
            (h & !1, w & !1)
        } else {
            (h, w)
        };
        cases.push((
            rng.range(1, 4),
            rng.range(1, 9),
            h,
            w,
            rng.range(1, 9),
            k,
            stride,
            pad,
        ));
    }
    for (n, c, h, w, o, k, stride, pad) in cases {
        let x = rng.tensor(&[n, c, h, w]);
        let wt = rng.tensor(&[o, c, k, k]);
        compare(
            &mut rng,
            &[x, wt],
            |t| conv2d(&t[0], &t[1], stride, pad).unwrap(),
            |t| t[0].conv2d(&t[1], pad, stride, 1, 1).unwrap(),
            &format!("conv2d n{n} c{c} {h}x{w} o{o} k{k} s{stride}"),
        );
    }
}

#[test]
fn conv2d_on_data_gives_kernel_gradients_only() {
    // The first layer's input is data, not a variable: its gradient is
    // skipped, the kernel and bias gradients still match candle's.
    let mut rng = Lcg(9);
    let x = rng.tensor(&[2, 1, 9, 7]);
    let w = Var::from_tensor(&rng.tensor(&[4, 1, 3, 3])).unwrap();
    let b = Var::from_tensor(&rng.tensor(&[4])).unwrap();
    let r = rng.tensor(&[2, 4, 9, 7]);
    let fast = conv2d_bias(&x, &w, &b, 1, 1).unwrap();
    let stock = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (&stock * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(gf.get(&x).is_none(), "no gradient for the data");
    for t in [w.as_tensor(), b.as_tensor()] {
        let (a, want) = (gf.get(t).unwrap(), gs.get(t).unwrap());
        assert!(max_diff(a, want) <= 2e-4 * scale(want));
    }
}

#[test]
fn conv2d_bias_matches_stock() {
    let mut rng = Lcg(5);
    // Odd sizes and more channels than the direct kernel's blocks of 4.
    for (n, c, h, w, o) in [
        (1, 32, 12, 12, 64),
        (2, 128, 6, 6, 7),
        (3, 5, 11, 9, 6),
        (2, 16, 24, 24, 9),
    ] {
        let x = rng.tensor(&[n, c, h, w]);
        let wt = rng.tensor(&[o, c, 3, 3]);
        let b = rng.tensor(&[o]);
        compare(
            &mut rng,
            &[x, wt, b],
            |t| conv2d_bias(&t[0], &t[1], &t[2], 1, 1).unwrap(),
            |t| {
                t[0].conv2d(&t[1], 1, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&t[2].reshape((1, o, 1, 1)).unwrap())
                    .unwrap()
            },
            &format!("conv2d+bias n{n} c{c} {h}x{w} o{o}"),
        );
    }
}

#[test]
fn max_pool_relu_matches_stock() {
    let mut rng = Lcg(6);
    for (n, c, h, w) in [(2, 16, 48, 48), (1, 3, 5, 7)] {
        let x = rng.distinct(&[n, c, h, w]);
        compare(
            &mut rng,
            &[x],
            |t| max_pool2_relu(&t[0]).unwrap(),
            |t| window_max(&t[0]).relu().unwrap(),
            &format!("maxpool+relu n{n} c{c} {h}x{w}"),
        );
    }
}

#[test]
fn depthwise_matches_grouped_conv() {
    let mut rng = Lcg(2);
    // Planes up to 32x32 take the zero-bordered path, larger ones the
    // row-and-edges path.
    for (n, c, h, w) in [
        (1, 16, 24, 24),
        (2, 3, 5, 7),
        (3, 1, 1, 1),
        (1, 2, 2, 9),
        (1, 2, 32, 32),
        (2, 2, 40, 37),
    ] {
        let x = rng.tensor(&[n, c, h, w]);
        let wt = rng.tensor(&[c, 1, 3, 3]);
        compare(
            &mut rng,
            &[x, wt],
            |t| depthwise3x3(&t[0], &t[1]).unwrap(),
            |t| t[0].conv2d(&t[1], 1, 1, 1, c).unwrap(),
            &format!("depthwise n{n} c{c} {h}x{w}"),
        );
    }
}

#[test]
fn max_pool_matches_stock() {
    let mut rng = Lcg(3);
    for (n, c, h, w) in [(1, 8, 48, 48), (2, 3, 7, 5), (1, 1, 2, 2), (3, 2, 6, 9)] {
        let x = rng.distinct(&[n, c, h, w]);
        compare(
            &mut rng,
            &[x],
            |t| max_pool2(&t[0]).unwrap(),
            // candle 0.11's own `max_pool2d` backward scales the gradient by 1/4
            // (see `stock_max_pool2d_backward_is_off_by_four`), so the reference
            // gradient comes from a reshape + max formulation.
            |t| window_max(&t[0]),
            &format!("maxpool n{n} c{c} {h}x{w}"),
        );
    }
}

fn window_max(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let x = x
        .narrow(2, 0, h / 2 * 2)
        .unwrap()
        .narrow(3, 0, w / 2 * 2)
        .unwrap();
    x.reshape((n, c, h / 2, 2, w / 2, 2))
        .unwrap()
        .max(5)
        .unwrap()
        .max(3)
        .unwrap()
}

#[test]
fn stock_max_pool2d_backward_is_off_by_four() {
    // Documents why the reference above is not `max_pool2d`: if candle fixes
    // this, this test fails and the reference can go back to the stock op.
    let x =
        Var::from_tensor(&Tensor::new(&[[[[1f32, 5.], [3., 4.]]]], &Device::Cpu).unwrap()).unwrap();
    let g = x
        .as_tensor()
        .max_pool2d(2)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let stock = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(stock, vec![0.0, 0.25, 0.0, 0.0]);
    let g = max_pool2(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let fast = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(fast, vec![0.0, 1.0, 0.0, 0.0]);
}

fn stock_bn(t: &[Tensor], eps: f64, relu: bool) -> Tensor {
    let (x, g, b) = (&t[0], &t[1], &t[2]);
    let c = g.dim(0).unwrap();
    let mean = x.mean_keepdim((0, 2, 3)).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
    let y = xc
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap();
    if relu { y.relu().unwrap() } else { y }
}

#[test]
fn batch_norm_train_matches_composed_ops() {
    let mut rng = Lcg(4);
    for (n, c, h, w, relu) in [
        (4, 8, 12, 12, true),
        (1, 3, 5, 7, false),
        (2, 16, 1, 1, true),
        (3, 5, 6, 6, false),
    ] {
        let x = (rng.tensor(&[n, c, h, w]) * 3.0).unwrap();
        let g = rng.tensor(&[c]);
        let b = rng.tensor(&[c]);
        compare(
            &mut rng,
            &[x.clone(), g, b],
            |t| batch_norm_train(&t[0], &t[1], &t[2], 1e-3, relu).unwrap().0,
            |t| stock_bn(t, 1e-3, relu),
            &format!("batchnorm n{n} c{c} {h}x{w} relu {relu}"),
        );
        let (_, stats) =
            batch_norm_train(&x, &rng.tensor(&[c]), &rng.tensor(&[c]), 1e-3, relu).unwrap();
        let mean: Vec<f32> = x
            .mean_keepdim((0, 2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in stats.mean.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}

/// Stock convolution (plus bias), composed BatchNorm, then ReLU or a
/// reshape + max pooling (see `max_pool_matches_stock`) and ReLU.
fn stock_conv_bn(t: &[Tensor], (stride, pad): (usize, usize), then: BnThen) -> Tensor {
    let mut z = t[0].conv2d(&t[1], pad, stride, 1, 1).unwrap();
    if let Some(b) = t.get(4) {
        z = z.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
    }
    let y = stock_bn(&[z, t[2].clone(), t[3].clone()], 1e-3, then == BnThen::Relu);
    match then {
        BnThen::PoolRelu => window_max(&y).relu().unwrap(),
        _ => y,
    }
}

#[test]
fn conv_bn_train_matches_stock_conv_then_batch_norm() {
    use BnThen::{Nothing, PoolRelu, Relu};
    let mut rng = Lcg(5);
    for (n, c, h, w, o, k, stride, bias, then) in [
        // ARCH-1's first layer at batch 1: direct kernel, direct kernel gradient.
        (1, 1, 48, 48, 8, 3, 1, false, Relu),
        (3, 4, 31, 33, 5, 3, 1, true, Nothing),
        (2, 16, 24, 24, 32, 1, 1, false, Relu),
        (4, 16, 12, 12, 32, 1, 2, false, Nothing),
        // Small planes and whole blocks of 16 channels: the Winograd kernels;
        // whole blocks of outputs only: the wide kernel.
        (2, 16, 6, 6, 32, 3, 1, true, Relu),
        (2, 32, 12, 12, 16, 3, 1, false, PoolRelu),
        (2, 8, 6, 6, 16, 3, 1, true, Relu),
        (2, 3, 7, 5, 16, 3, 1, true, Relu),
        (1, 2, 1, 1, 3, 3, 1, true, Nothing),
        // Pooling: a 48x48 stem layer, a pointwise one, odd sizes.
        (2, 8, 48, 48, 16, 3, 1, false, PoolRelu),
        (2, 16, 24, 24, 32, 1, 1, false, PoolRelu),
        (3, 3, 7, 9, 5, 3, 1, true, PoolRelu),
    ] {
        let geom = (stride, k / 2);
        let mut inputs = vec![
            rng.tensor(&[n, c, h, w]),
            rng.tensor(&[o, c, k, k]),
            rng.tensor(&[o]),
            rng.tensor(&[o]),
        ];
        if bias {
            inputs.push(rng.tensor(&[o]));
        }
        let what = format!("conv+bn n{n} c{c} {h}x{w} o{o} k{k} s{stride} bias {bias} {then:?}");
        let fused = |t: &[Tensor]| {
            conv_bn_train(&t[0], &t[1], t.get(4), &t[2], &t[3], geom, 1e-3, then).unwrap()
        };
        compare(
            &mut rng,
            &inputs,
            |t| fused(t).0,
            |t| stock_conv_bn(t, geom, then),
            &what,
        );
        // The statistics are the convolution output's (bias included).
        let stats = fused(&inputs).1;
        let mut z = inputs[0].conv2d(&inputs[1], k / 2, stride, 1, 1).unwrap();
        if let Some(b) = inputs.get(4) {
            z = z.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
        }
        let mean = z.mean_keepdim((0, 2, 3)).unwrap();
        let var = z.broadcast_sub(&mean).unwrap().sqr().unwrap();
        let var = var.mean_keepdim((0, 2, 3)).unwrap();
        let want = [mean, var].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let got = [&stats.mean, &stats.var];
        for (a, b) in got.iter().zip(&want).flat_map(|(g, w)| g.iter().zip(w)) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "{what}: statistics {a} vs {b}"
            );
        }
    }
}

#[test]
fn conv_bn_train_on_data_gives_parameter_gradients_only() {
    // The first layer's input is data: no input gradient is computed, and the
    // parameters' gradients still match the stock ops'.
    let mut rng = Lcg(6);
    let x = rng.tensor(&[3, 2, 9, 10]);
    let params: Vec<Var> = [&[4, 2, 3, 3][..], &[4], &[4], &[4]]
        .iter()
        .map(|s| Var::from_tensor(&rng.tensor(s)).unwrap())
        .collect();
    let t: Vec<Tensor> = params.iter().map(|v| v.as_tensor().clone()).collect();
    let r = rng.tensor(&[3, 4, 9, 10]);
    let yf = conv_bn_train(
        &x,
        &t[0],
        Some(&t[3]),
        &t[1],
        &t[2],
        (1, 1),
        1e-3,
        BnThen::Relu,
    )
    .unwrap()
    .0;
    let all = [
        x.clone(),
        t[0].clone(),
        t[1].clone(),
        t[2].clone(),
        t[3].clone(),
    ];
    let ys = stock_conv_bn(&all, (1, 1), BnThen::Relu);
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (&ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(gf.get(&x).is_none());
    for (i, p) in t.iter().enumerate() {
        let d = max_diff(gf.get(p).unwrap(), gs.get(p).unwrap());
        assert!(d <= 2e-4, "parameter {i}: gradient differs by {d}");
    }
}

#[test]
fn par_output_fills_zeroed_chunks_and_extra_zeros() {
    // Each chunk arrives zeroed (here `fill` writes only every other value).
    // Uninitialised memory may happen to read as zero, so without the zeroing
    // this could still pass; Miri would flag the read.
    let out = par_output(
        5,
        3,
        2,
        || (),
        |_, i, chunk| {
            assert!(chunk.iter().all(|v| *v == 0.0));
            chunk[0] = i as f32 + 1.0;
            chunk[2] = -(i as f32);
        },
    );
    assert_eq!(out.len(), 17);
    for i in 0..5 {
        assert_eq!(&out[i * 3..i * 3 + 3], &[i as f32 + 1.0, 0.0, -(i as f32)]);
    }
    assert_eq!(&out[15..], &[0.0, 0.0]);
    // Empty chunks or no chunks: just the extra zeros.
    assert_eq!(par_output(4, 0, 3, || (), |_, _, _| {}), vec![0.0; 3]);
    assert!(par_output(0, 7, 0, || (), |_, _, _| {}).is_empty());
    // A panic in `fill` reaches the caller (and frees the buffer).
    let r = std::panic::catch_unwind(|| par_output(8, 4, 0, || (), |_, i, _| assert!(i != 5)));
    assert!(r.is_err());
}
