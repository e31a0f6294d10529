//! Reshaping tensors for batches: [`concat()`] and [`split`] join requests into one batch
//! along a model's batch axis and part the outputs again; [`pad`] and [`truncate`] lengthen
//! requests along a sequence axis to a batch's longest and cut outputs back to each
//! request's length.

use super::value::Tensor;

/// Joins tensors of equal shape but for `axis` into one, in order.
pub fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
    let first = parts[0];
    let mut shape = first.shape.clone();
    shape[axis] = parts.iter().map(|t| t.shape[axis]).sum();
    // Row-major: the data is `outer` blocks, each holding the axis's slices for one position
    // of the dimensions before `axis`.
    let outer: usize = first.shape[..axis].iter().product();
    let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
    for block in 0..outer {
        for part in parts {
            let block_len = part.data.len() / outer.max(1);
            data.extend_from_slice(&part.data[block * block_len..(block + 1) * block_len]);
        }
    }
    Tensor { element_type: first.element_type, shape, data: data.into() }
}

/// Parts a tensor along `axis` into pieces of the given sizes, in order. Along the first
/// axis (a batch) each piece shares the tensor's bytes.
pub fn split(tensor: &Tensor, axis: usize, sizes: &[usize]) -> Vec<Tensor> {
    let outer: usize = tensor.shape[..axis].iter().product();
    let per_item = tensor.data.len() / outer.max(1) / tensor.shape[axis].max(1);
    let block_len = tensor.data.len() / outer.max(1);
    let mut offset = 0;
    sizes
        .iter()
        .map(|&size| {
            let (start, end) = (offset, offset + size * per_item);
            offset = end;
            let data = if outer == 1 {
                tensor.data.slice(start..end)
            } else {
                let blocks = tensor.data.chunks(block_len.max(1)).take(outer);
                blocks.flat_map(|block| &block[start..end]).copied().collect::<Vec<u8>>().into()
            };
            let mut shape = tensor.shape.clone();
            shape[axis] = size;
            Tensor { element_type: tensor.element_type, shape, data }
        })
        .collect()
}

/// Lengthens a tensor along `axis` to `length`, filling the new positions with `fill` (one
/// element's little-endian bytes).
pub fn pad(tensor: &Tensor, axis: usize, length: usize, fill: &[u8]) -> Tensor {
    let size = tensor.shape[axis];
    debug_assert!(length >= size && fill.len() == tensor.element_type.size());
    // Row-major: for each position of the dimensions before `axis` there is one block of
    // `size` slices, each `inner` bytes long; it grows to `length` slices.
    let outer: usize = tensor.shape[..axis].iter().product();
    let inner = tensor.element_type.size() * tensor.shape[axis + 1..].iter().product::<usize>();
    let padding: Vec<u8> = fill.iter().copied().cycle().take((length - size) * inner).collect();
    let mut data = Vec::with_capacity(outer * length * inner);
    for block in tensor.data.chunks((size * inner).max(1)).take(outer) {
        data.extend_from_slice(block);
        data.extend_from_slice(&padding);
    }
    let mut shape = tensor.shape.clone();
    shape[axis] = length;
    Tensor { element_type: tensor.element_type, shape, data: data.into() }
}

/// Keeps the first `length` positions of a tensor along `axis`.
pub fn truncate(tensor: &Tensor, axis: usize, length: usize) -> Tensor {
    let size = tensor.shape[axis];
    debug_assert!(length <= size);
    let outer: usize = tensor.shape[..axis].iter().product();
    let inner = tensor.element_type.size() * tensor.shape[axis + 1..].iter().product::<usize>();
    let mut data = Vec::with_capacity(outer * length * inner);
    for block in tensor.data.chunks((size * inner).max(1)).take(outer) {
        data.extend_from_slice(&block[..length * inner]);
    }
    let mut shape = tensor.shape.clone();
    shape[axis] = length;
    Tensor { element_type: tensor.element_type, shape, data: data.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::ElementType;

    fn counting(shape: Vec<usize>, start: u8) -> Tensor {
        let len = shape.iter().product::<usize>();
        Tensor::new(ElementType::U8, shape, (0..len).map(|i| start + i as u8).collect::<Vec<u8>>()).unwrap()
    }

    #[test]
    fn concat_then_split_round_trips_on_any_axis() {
        // Like a recurrent state [layers=2, batch, width=3], batched along axis 1.
        let a = counting(vec![2, 1, 3], 0);
        let b = counting(vec![2, 2, 3], 100);
        let joined = concat(&[&a, &b], 1);
        assert_eq!(joined.shape, vec![2, 3, 3]);
        // Layer 0 holds a's row then b's two rows, then layer 1 the same.
        assert_eq!(&joined.data[..9], &[0, 1, 2, 100, 101, 102, 103, 104, 105]);
        assert_eq!(split(&joined, 1, &[1, 2]), vec![a.clone(), b.clone()]);

        let c = counting(vec![3, 1, 3], 100);
        let rows = concat(&[&c, &a], 0);
        assert_eq!(rows.shape, vec![5, 1, 3]);
        assert_eq!(&rows.data[7..11], &[107, 108, 0, 1], "a's rows follow c's");
        assert_eq!(split(&rows, 0, &[3, 2]), vec![c, a]);
    }
    #[test]
    fn pad_then_truncate_round_trips_on_any_axis() {
        // [batch=2, sequence=2, width=2] padded along the sequence axis to 3 with 0xff.
        let tensor = counting(vec![2, 2, 2], 1);
        let padded = pad(&tensor, 1, 3, &[0xff]);
        assert_eq!(padded.shape, vec![2, 3, 2]);
        assert_eq!(padded.data, vec![1, 2, 3, 4, 255, 255, 5, 6, 7, 8, 255, 255]);
        assert_eq!(truncate(&padded, 1, 2), tensor);
        // The last axis, with multi-byte elements.
        let ids = Tensor::new(
            ElementType::I32,
            vec![1, 2],
            [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let padded = pad(&ids, 1, 4, &(-1i32).to_le_bytes());
        let values: Vec<i32> =
            padded.data.chunks(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![7, 8, -1, -1]);
        assert_eq!(truncate(&padded, 1, 2), ids);
    }
}
