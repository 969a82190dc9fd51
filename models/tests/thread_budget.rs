//! Candle's element-wise ops keep to the caller's rayon pool: a game plugin
//! that runs perception in a pool of one thread (`EmotionSettings::threads`)
//! gets no extra threads from candle's own parallel section (the vendored
//! patch in `vendor/candle-core/src/utils.rs`). Its own process: it counts
//! the process's threads.

#[cfg(target_os = "linux")]
#[test]
fn candle_elementwise_ops_stay_in_the_callers_pool() {
    use candle_core::{Device, Tensor};
    // SAFETY: set before any thread of this test process reads it (the
    // only test here; candle reads it when its pools first start).
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "4") };
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let ops = || {
        let x = (Tensor::arange(0f32, 1_000_000f32, &Device::Cpu).unwrap() * 1e-6).unwrap();
        let y = (&x + &x).unwrap().exp().unwrap();
        y.sum_all().unwrap().to_scalar::<f32>().unwrap()
    };
    // A pool of `n` threads, all started.
    let pool_of = |n| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        pool.broadcast(|_| ());
        pool
    };
    let pool = pool_of(1);
    let before = threads();
    let inside = pool.install(ops);
    assert_eq!(threads(), before, "candle started threads of its own");
    // A pool of three splits the work over its own threads.
    let three = pool_of(3);
    let before = threads();
    let split = three.install(ops);
    assert_eq!(threads(), before, "candle started threads of its own");
    // Outside any pool candle uses its own threads (so the checks above can
    // fail), with the same result.
    let outside = ops();
    assert!(threads() > before, "candle's own pool did not start");
    assert_eq!(inside.to_bits(), outside.to_bits());
    assert_eq!(split.to_bits(), outside.to_bits());
}
