//! The weights loaders, both formats (emotion-cnn classifier and MTCNN): a
//! safetensors header, its metadata and tensors, then building the network.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = models::LoadedWeights::from_bytes(data, &Device::Cpu) {
        let _ = w.build(&Device::Cpu);
    }
    let _ = models::mtcnn::Mtcnn::from_bytes(data, &Device::Cpu);
    let _ = perception::Weights::from_bytes(data);
});
