//! GPU devices as `/metrics` reports them: memory used and total per device, read through
//! NVML (`libnvidia-ml.so`, loaded dynamically at the first scrape). Without NVML (no NVIDIA
//! driver, as on CPU-only nodes) there are simply no GPU series.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;

use crate::telemetry::metrics;

/// NVML, if the driver's library could be loaded.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().ok()).as_ref()
}

/// Sets the GPU memory gauges from the devices' current state.
pub fn refresh_memory_gauges() {
    let Some(nvml) = nvml() else { return };
    let count = nvml.device_count().unwrap_or(0);
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else { continue };
        let (Ok(name), Ok(memory)) = (device.name(), device.memory_info()) else { continue };
        metrics::gpu_memory(index, &name, memory.used, memory.total);
    }
}
