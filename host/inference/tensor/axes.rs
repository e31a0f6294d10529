//! Which axis of a model's tensors is which: [`find_axes`] finds the batch and sequence axes
//! from the symbolic dimensions a model file declares, for every backend.

/// Which axes of a model's tensors are its batch and sequence axes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Axes {
    pub batch: Option<usize>,
    pub sequence: Option<usize>,
}

/// One dimension of a model's tensor as the model file declares it, for [`find_axes`].
#[derive(Clone, Debug, PartialEq)]
pub enum DeclaredDim<S> {
    /// A fixed size.
    Fixed,
    /// A free size named by a symbol (`batch`, `sequence`).
    Named(S),
    /// A free size with no name, or one derived from others (`sequence - 2`).
    Unnamed,
}

/// Finds the batch and sequence axes of a model from its tensors' declared dimensions, inputs
/// and outputs in order:
/// - the batch axis is a symbol of the first input that every input and output has exactly
///   once (`batch` in `pixels [batch, 64]` and `state [2, batch, 128]`);
/// - the sequence axis is the one other symbol that every input has exactly once
///   (`sequence` in MiniLM's `input_ids [batch, sequence]`). It is only a sequence axis if
///   every output's free dimensions are its batch axis and at most one sequence axis: then
///   padding a request and cutting its outputs back gives it exactly the shapes it would get
///   alone. An output sized by something else (`sequence - 2`, an unnamed length, the
///   sequence twice as in `[batch, sequence, sequence]`) makes none.
///
/// A model without a batch axis has no sequence axis either, and two candidates for the
/// sequence axis make neither one (padding along the wrong axis would change the answers).
pub fn find_axes<S: PartialEq>(
    inputs: &[Vec<DeclaredDim<S>>],
    outputs: &[Vec<DeclaredDim<S>>],
) -> (Vec<Axes>, Vec<Axes>) {
    let count = |dims: &[DeclaredDim<S>], symbol: &S| {
        dims.iter().filter(|d| matches!(d, DeclaredDim::Named(s) if s == symbol)).count()
    };
    let once_in =
        |tensors: &[Vec<DeclaredDim<S>>], symbol: &S| tensors.iter().all(|dims| count(dims, symbol) == 1);
    let first_symbols: Vec<&S> = inputs
        .first()
        .map(|dims| {
            dims.iter().filter_map(|d| if let DeclaredDim::Named(s) = d { Some(s) } else { None }).collect()
        })
        .unwrap_or_default();
    let batch =
        first_symbols.iter().copied().find(|symbol| once_in(inputs, symbol) && once_in(outputs, symbol));
    let sequence = batch.and_then(|batch| {
        let mut candidates =
            first_symbols.iter().copied().filter(|symbol| *symbol != batch && once_in(inputs, symbol));
        let only = match (candidates.next(), candidates.next()) {
            (Some(only), None) => only,
            _ => return None,
        };
        let output_fits = |dims: &Vec<DeclaredDim<S>>| {
            count(dims, only) <= 1
                && dims.iter().all(|d| match d {
                    DeclaredDim::Fixed => true,
                    DeclaredDim::Named(s) => s == batch || s == only,
                    DeclaredDim::Unnamed => false,
                })
        };
        outputs.iter().all(output_fits).then_some(only)
    });
    let position = |dims: &Vec<DeclaredDim<S>>, symbol: Option<&S>| {
        symbol.and_then(|symbol| dims.iter().position(|d| matches!(d, DeclaredDim::Named(s) if s == symbol)))
    };
    let axes = |tensors: &[Vec<DeclaredDim<S>>]| {
        tensors
            .iter()
            .map(|dims| Axes { batch: position(dims, batch), sequence: position(dims, sequence) })
            .collect()
    };
    (axes(inputs), axes(outputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_come_from_shared_symbols() {
        use DeclaredDim::{Fixed, Named, Unnamed};
        let b = || Named("b");
        let s = || Named("s");
        // MiniLM: the batch and sequence symbols; a pooled output has no sequence axis.
        let (inputs, outputs) =
            find_axes(&[vec![b(), s()], vec![b(), s()]], &[vec![b(), s(), Fixed], vec![b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: Some(1) }; 2]);
        assert_eq!(
            outputs,
            vec![Axes { batch: Some(0), sequence: Some(1) }, Axes { batch: Some(0), sequence: None }]
        );
        // A recurrent state batched along axis 1, no sequence.
        let (inputs, _) = find_axes(&[vec![Fixed, b(), Fixed]], &[vec![Fixed, b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(1), sequence: None }]);
        // Two candidates for the sequence axis (an image's height and width): neither.
        let (inputs, _) = find_axes(&[vec![b(), Fixed, Named("h"), Named("w")]], &[vec![b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: None }]);
        // A symbol one input lacks is not a sequence axis.
        let (inputs, _) = find_axes(&[vec![b(), s()], vec![b(), Fixed]], &[vec![b()]]);
        assert_eq!(inputs[0], Axes { batch: Some(0), sequence: None });
        // No batch axis, no sequence axis.
        let (inputs, _) = find_axes(&[vec![s()]], &[vec![Fixed]]);
        assert_eq!(inputs, vec![Axes::default()]);
        // Outputs whose length is not the inputs' cannot be cut back: no padding.
        for output in [vec![b(), s(), s()], vec![b(), Unnamed], vec![b(), Named("frames")]] {
            let (inputs, outputs) = find_axes(&[vec![b(), s()]], std::slice::from_ref(&output));
            assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: None }], "{output:?}");
            assert_eq!(outputs[0].sequence, None);
        }
    }
}
