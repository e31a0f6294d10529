//! What every layer reports: Prometheus `metrics`, `gpu` memory read through NVML, and the
//! `cpu` time and resident memory of this process and the machine.

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod metrics;
