//! ONNX Runtime, loaded dynamically: a faster CPU backend where it is installed, and the GPU
//! backend through its CUDA execution provider.
//!
//! Nothing of ONNX Runtime is linked into the binary. The shared library is opened at the
//! first use, from `ORT_DYLIB_PATH` if set, else the config's
//! `server.onnxruntime_library` ([`use_library`]), else `libonnxruntime.so` on the library
//! path (the `onnxruntime` PyPI wheel ships one in `onnxruntime/capi/`, which
//! `models/onnxruntime/fetch.py` extracts; the `onnxruntime-gpu` wheel one with the CUDA
//! provider). Every failure (no library, no CUDA provider, no device) is an
//! error the caller can fall back on, never a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, anyhow, bail};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep::ExecutionProviderDispatch;
use ort::session::Session as OrtSessionHandle;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::{Backend, Session};
use crate::inference::tensor::{
    Axes, DeclaredDim, Dim, ElementType, Signature, Tensor, TensorSpec, find_axes,
};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device, by index.
    Cuda(i32),
}

/// A model for ONNX Runtime: its bytes (each executor makes its own session from them) and
/// its signature.
pub struct OrtModel {
    bytes: Arc<Vec<u8>>,
    device: Device,
    signature: Signature,
}

/// The library the configuration names, set once before the first model loads.
static CONFIGURED_LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// The ONNX Runtime library the node loads, as `ORT_DYLIB_PATH` or the configuration name
/// it (else the name looked up on the library path).
pub fn library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        CONFIGURED_LIBRARY.get().cloned().unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
    })
}

/// Loads ONNX Runtime from `library` unless `ORT_DYLIB_PATH` says otherwise. Only the first
/// call counts, and only before the library is first loaded.
pub fn use_library(library: &Path) {
    let _ = CONFIGURED_LIBRARY.set(library.to_path_buf());
}

/// Loads the ONNX Runtime library and makes its environment, once per process; the error
/// says why it is unusable.
fn runtime() -> Result<&'static Environment, String> {
    static LOADED: OnceLock<Result<Environment, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = library();
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            // One pool of intra-op threads for every session: a run alone spreads over the
            // cores the other executors leave idle, and when every executor is busy the pool
            // is all there is, never a pool per session. Its threads spin briefly for more
            // work before they sleep, as ONNX Runtime's own pools do: without it, waking them
            // for each small operator cost a third of MiniLM's throughput at one client.
            let pool = GlobalThreadPoolOptions::default()
                .with_intra_threads(cores)
                .and_then(|pool| pool.with_spin_control(true))
                .map_err(|e| format!("ONNX Runtime's thread pool: {e}"))?;
            builder
                .with_name("edge-infer")
                .with_global_thread_pool(pool)
                .build()
                .map_err(|e| format!("ONNX Runtime did not start: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl OrtModel {
    /// Loads an ONNX model for `device`. One session is made to read the signature and to
    /// prove that the device works; errors explain what is missing.
    pub fn load(bytes: Vec<u8>, device: Device) -> anyhow::Result<OrtModel> {
        let bytes = Arc::new(bytes);
        let session = new_session(&bytes, device)?;
        let signature = signature_of(&session)?;
        Ok(OrtModel { bytes, device, signature })
    }
}

fn execution_provider(device: Device) -> anyhow::Result<Option<ExecutionProviderDispatch>> {
    match device {
        Device::Cpu => Ok(None),
        #[cfg(feature = "gpu")]
        Device::Cuda(id) => {
            use ort::ep::ExecutionProvider;
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            if !available {
                bail!("the loaded ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu)");
            }
            Ok(Some(ort::ep::CUDA::default().with_device_id(id).build().error_on_failure()))
        }
        #[cfg(not(feature = "gpu"))]
        Device::Cuda(_) => bail!("edge-infer was built without the `gpu` feature"),
    }
}

/// An ONNX Runtime session for a model, on the shared thread pool; for callers that drive
/// ONNX Runtime's values themselves (the decoder of `inference::generation`).
pub(crate) fn new_session(bytes: &[u8], device: Device) -> anyhow::Result<OrtSessionHandle> {
    let environment = runtime().map_err(anyhow::Error::msg)?;
    // Sessions run on the environment's shared thread pool (see `runtime`).
    let mut builder = OrtSessionHandle::builder(environment)?;
    if let Some(provider) = execution_provider(device)? {
        builder = builder.with_execution_providers([provider]).map_err(|e| anyhow!("{e}"))?;
    }
    builder
        .commit_from_memory(bytes)
        .map_err(|e| anyhow!("ONNX Runtime cannot load the model on {device:?}: {e}"))
}

impl Backend for OrtModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn new_session(&self) -> anyhow::Result<Box<dyn Session>> {
        let session = new_session(&self.bytes, self.device)?;
        let outputs = self.signature.outputs.iter().map(|spec| spec.name.clone()).collect();
        let inputs = self.signature.inputs.iter().map(|spec| spec.name.clone()).collect();
        Ok(Box::new(OrtSession { session, inputs, outputs }))
    }

    fn name(&self) -> &'static str {
        match self.device {
            Device::Cpu => "ort",
            Device::Cuda(_) => "ort-cuda",
        }
    }

    fn on_gpu(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }
}

/// One executor's ONNX Runtime session.
struct OrtSession {
    session: OrtSessionHandle,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Session for OrtSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let values = self
            .inputs
            .iter()
            .zip(inputs)
            .map(|(name, tensor)| Ok((name.clone(), to_ort(tensor)?)))
            .collect::<anyhow::Result<Vec<(String, DynValue)>>>()?;
        let outputs = self.session.run(values)?;
        self.outputs.iter().map(|name| from_ort(&outputs[name.as_str()])).collect()
    }
}

fn to_ort(tensor: Tensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    fn values<
        T: Clone + 'static + ort::value::PrimitiveTensorElementType + std::fmt::Debug,
        const N: usize,
    >(
        shape: Vec<i64>,
        data: &[u8],
        from: fn([u8; N]) -> T,
    ) -> anyhow::Result<DynValue> {
        let items: Vec<T> = data.chunks_exact(N).map(|b| from(b.try_into().expect("chunks of N"))).collect();
        Ok(OrtTensor::from_array((shape, items))?.into_dyn())
    }
    match tensor.element_type {
        ElementType::F32 => values(shape, &tensor.data, f32::from_le_bytes),
        ElementType::F64 => values(shape, &tensor.data, f64::from_le_bytes),
        ElementType::I32 => values(shape, &tensor.data, i32::from_le_bytes),
        ElementType::I64 => values(shape, &tensor.data, i64::from_le_bytes),
        ElementType::U8 => values(shape, &tensor.data, u8::from_le_bytes),
        other => bail!("the ONNX Runtime backend does not take {other} tensors"),
    }
}

fn from_ort(value: &DynValue) -> anyhow::Result<Tensor> {
    fn bytes<T: ort::value::PrimitiveTensorElementType, const N: usize>(
        value: &DynValue,
        element_type: ElementType,
        to: fn(&T) -> [u8; N],
    ) -> anyhow::Result<Tensor> {
        let (shape, items) = value.try_extract_tensor::<T>()?;
        let shape = shape.iter().map(|&d| d as usize).collect();
        Tensor::new(element_type, shape, items.iter().flat_map(to).collect::<Vec<u8>>())
            .map_err(anyhow::Error::msg)
    }
    match value.dtype().tensor_type() {
        Some(TensorElementType::Float32) => bytes(value, ElementType::F32, |v: &f32| v.to_le_bytes()),
        Some(TensorElementType::Float64) => bytes(value, ElementType::F64, |v: &f64| v.to_le_bytes()),
        Some(TensorElementType::Int32) => bytes(value, ElementType::I32, |v: &i32| v.to_le_bytes()),
        Some(TensorElementType::Int64) => bytes(value, ElementType::I64, |v: &i64| v.to_le_bytes()),
        Some(TensorElementType::Uint8) => bytes(value, ElementType::U8, |v: &u8| v.to_le_bytes()),
        other => bail!("output of type {other:?} cannot cross wasi:nn"),
    }
}

fn element_type(ty: TensorElementType) -> anyhow::Result<ElementType> {
    Ok(match ty {
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Bfloat16 => ElementType::Bf16,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        other => bail!("element type {other:?} cannot cross wasi:nn"),
    })
}

/// The signature ONNX Runtime reads from the model; the batch and sequence axes come from
/// the dimension names the model file gives (see [`find_axes`]).
fn signature_of(session: &OrtSessionHandle) -> anyhow::Result<Signature> {
    let symbols = |outlets: &[ort::value::Outlet]| -> Vec<Vec<DeclaredDim<String>>> {
        outlets
            .iter()
            .map(|outlet| match outlet.dtype() {
                ValueType::Tensor { shape, dimension_symbols, .. } => shape
                    .iter()
                    .zip(dimension_symbols.iter())
                    .map(|(&size, symbol)| match size {
                        0.. => DeclaredDim::Fixed,
                        _ if symbol.is_empty() => DeclaredDim::Unnamed,
                        _ => DeclaredDim::Named(symbol.clone()),
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    let (input_axes, output_axes) = find_axes(&symbols(session.inputs()), &symbols(session.outputs()));
    let spec = |(outlet, axes): (&ort::value::Outlet, Axes)| -> anyhow::Result<TensorSpec> {
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            bail!("{:?} is not a tensor", outlet.name());
        };
        Ok(TensorSpec {
            name: outlet.name().to_string(),
            element_type: element_type(*ty).with_context(|| format!("tensor {:?}", outlet.name()))?,
            shape: shape.iter().map(|&d| if d < 0 { Dim::Any } else { Dim::Fixed(d as usize) }).collect(),
            batch_axis: axes.batch,
            sequence_axis: axes.sequence,
        })
    };
    Ok(Signature {
        inputs: session.inputs().iter().zip(input_axes).map(spec).collect::<anyhow::Result<_>>()?,
        outputs: session.outputs().iter().zip(output_axes).map(spec).collect::<anyhow::Result<_>>()?,
    })
}
