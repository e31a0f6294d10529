//! Tensors as the host moves them between guests, schedulers and backends, and the
//! signature a model declares for its inputs and outputs.
//!
//! A [`Tensor`] is plain data (element type, shape, little-endian bytes), independent of any
//! backend, so `wasi:nn`, the scheduler and every backend agree on one representation
//! (`value`). [`Signature::check_inputs`] is where a request's tensors are validated against
//! a model, before they reach a queue (`signature`); [`concat()`] and [`split`] join requests
//! into one batch along a model's batch axis and part the outputs again, and [`pad`] and
//! [`truncate`] lengthen requests along a sequence axis to a batch's longest and cut outputs
//! back to each request's length (`reshape`). [`find_axes`] tells both backends which axis
//! is which from the model's symbolic dimensions (`axes`).

mod axes;
mod reshape;
mod signature;
mod value;

pub use self::axes::{Axes, DeclaredDim, find_axes};
pub use self::reshape::{concat, pad, split, truncate};
pub use self::signature::{Dim, Signature, TensorSpec};
pub use self::value::{ElementType, NamedTensor, Tensor, TensorError};

/// Fuzzing what a guest's `wasi:nn` calls and OIP clients hand the host: any shape, type
/// and byte count makes a tensor or a `TensorError` (no overflow, no panic); any named
/// tensors pass a model's input check only if they fit it; and the batcher's reshaping
/// (pad, truncate, split, concat) gives back what it was given.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn element_type() -> impl Strategy<Value = ElementType> {
        prop::sample::select(vec![
            ElementType::F16,
            ElementType::F32,
            ElementType::F64,
            ElementType::Bf16,
            ElementType::U8,
            ElementType::I32,
            ElementType::I64,
        ])
    }

    /// A valid tensor of rank 1 to 3, each dimension 1 to 4.
    fn tensor() -> impl Strategy<Value = Tensor> {
        (element_type(), prop::collection::vec(1usize..5, 1..4)).prop_flat_map(|(element_type, shape)| {
            let bytes = shape.iter().product::<usize>() * element_type.size();
            prop::collection::vec(any::<u8>(), bytes)
                .prop_map(move |data| Tensor::new(element_type, shape.clone(), data).unwrap())
        })
    }

    /// A text model's inputs: `ids` and `mask`, `[batch, sequence]`, int64.
    fn text_model() -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            element_type: ElementType::I64,
            shape: vec![Dim::Any, Dim::Any],
            batch_axis: Some(0),
            sequence_axis: Some(1),
        };
        Signature { inputs: vec![spec("ids"), spec("mask")], outputs: vec![spec("hidden")] }
    }

    proptest! {
        #[test]
        fn any_shape_and_length(
            element_type in element_type(),
            shape in prop::collection::vec(prop_oneof![0usize..8, Just(usize::MAX), Just(1usize << 33)], 0..6),
            length in prop_oneof![0usize..512, Just(usize::MAX)],
        ) {
            let expected = shape.iter().try_fold(element_type.size(), |acc, &d| acc.checked_mul(d));
            // Data only as long as a test can afford: a huge claimed length is checked by size.
            let data = vec![0u8; length.min(4096)];
            let result = Tensor::new(element_type, shape, data);
            prop_assert_eq!(result.is_ok(), expected == Some(length.min(4096)));
        }

        #[test]
        fn any_named_inputs(
            given in prop::collection::vec(
                (prop::sample::select(vec!["ids", "mask", "other"]), element_type(), prop::collection::vec(0usize..4, 0..4)),
                0..4,
            ),
        ) {
            let signature = text_model();
            let named: Vec<NamedTensor> = given
                .into_iter()
                .map(|(name, element_type, shape)| {
                    let bytes = shape.iter().product::<usize>() * element_type.size();
                    (name.to_string(), Tensor::new(element_type, shape, vec![0u8; bytes]).unwrap())
                })
                .collect();
            if let Ok(ordered) = signature.check_inputs(named) {
                prop_assert_eq!(ordered.len(), 2);
                prop_assert!(ordered.iter().all(|t| t.element_type == ElementType::I64 && t.shape.len() == 2));
                prop_assert!(ordered.iter().all(|t| t.shape.iter().all(|&d| d > 0)));
                prop_assert_eq!(ordered[0].shape[1], ordered[1].shape[1]);
            }
        }

        #[test]
        fn reshaping_gives_back_what_it_was_given(tensor in tensor(), axis_pick in any::<prop::sample::Index>(), extra in 0usize..4) {
            let axis = axis_pick.index(tensor.shape.len());
            let size = tensor.shape[axis];
            let fill = vec![7u8; tensor.element_type.size()];
            let padded = pad(&tensor, axis, size + extra, &fill);
            prop_assert_eq!(&truncate(&padded, axis, size), &tensor);
            let cut = size / 2;
            let parts = split(&tensor, axis, &[cut, size - cut]);
            prop_assert_eq!(&concat(&[&parts[0], &parts[1]], axis), &tensor);
        }
    }
}
