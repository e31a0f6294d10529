//! The KV cache of decoder sequences, held by the host: each sequence's keys and values, and
//! the padded batch tensors one step of the model takes and gives.
//!
//! The model's cache layout is `[layers, 2, batch, kv_heads, tokens, head_dim]` (keys, then
//! values). A sequence keeps its own rows per layer, key or value, and head, and grows them by
//! the step's new entries; a batch is assembled left-padded to its longest sequence, with an
//! attention mask that marks the padding, so sequences of any length step together.

/// The shape of a decoder's cache: what one token costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl CacheShape {
    /// Rows a sequence keeps: one per layer, key or value, and head.
    fn rows(&self) -> usize {
        self.layers * 2 * self.kv_heads
    }

    /// Host bytes one token's keys and values take.
    pub fn bytes_per_token(&self) -> usize {
        self.rows() * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// One sequence's cache: `tokens` entries in each row.
pub struct SequenceCache {
    rows: Vec<Vec<f32>>,
    tokens: usize,
}

impl SequenceCache {
    pub fn new(shape: CacheShape) -> SequenceCache {
        SequenceCache { rows: vec![Vec::new(); shape.rows()], tokens: 0 }
    }

    /// Tokens cached so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// The inputs of one step for a batch of sequences, each appending its own new tokens.
pub struct StepInputs {
    pub batch: usize,
    /// New positions per sequence (the longest appending; shorter ones are left-padded).
    pub new: usize,
    /// Past positions per sequence (the longest cache; shorter ones are left-padded).
    pub past: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
    pub past_values: Vec<f32>,
}

/// The token that pads a batch (masked, so any valid id would do).
const PAD_TOKEN: i64 = 0;

/// Lays out one step for `sequences` (each its cache and the tokens it appends).
pub fn assemble(shape: CacheShape, sequences: &[(&SequenceCache, &[i64])]) -> StepInputs {
    let batch = sequences.len();
    let new = sequences.iter().map(|(_, tokens)| tokens.len()).max().unwrap_or(0);
    let past = sequences.iter().map(|(cache, _)| cache.tokens).max().unwrap_or(0);
    let total = past + new;
    let mut input_ids = vec![PAD_TOKEN; batch * new];
    let mut position_ids = vec![0; batch * new];
    let mut attention_mask = vec![0; batch * total];
    for (b, (cache, tokens)) in sequences.iter().enumerate() {
        let pad = new - tokens.len();
        for (i, &token) in tokens.iter().enumerate() {
            input_ids[b * new + pad + i] = token;
            position_ids[b * new + pad + i] = (cache.tokens + i) as i64;
        }
        let row = &mut attention_mask[b * total..(b + 1) * total];
        row[past - cache.tokens..past].fill(1);
        row[past + pad..].fill(1);
    }
    let row_len = past * shape.head_dim;
    let mut past_values = vec![0.0; shape.rows() * batch * row_len];
    for (b, (cache, _)) in sequences.iter().enumerate() {
        let offset = (past - cache.tokens) * shape.head_dim;
        for (r, row) in cache.rows.iter().enumerate() {
            // Row r is (layer, key or value, head): its place is [layer, kv, b, head].
            let (layer_kv, head) = (r / shape.kv_heads, r % shape.kv_heads);
            let start = ((layer_kv * batch + b) * shape.kv_heads + head) * row_len + offset;
            past_values[start..start + row.len()].copy_from_slice(row);
        }
    }
    StepInputs { batch, new, past, input_ids, attention_mask, position_ids, past_values }
}

/// Appends a step's `present` output (`[layers, 2, batch, kv_heads, new, head_dim]`) to each
/// sequence's cache: the last `appended[b]` positions of row b are its real tokens.
pub fn append(shape: CacheShape, present: &[f32], new: usize, caches: &mut [(&mut SequenceCache, usize)]) {
    let batch = caches.len();
    let row_len = new * shape.head_dim;
    for (b, (cache, appended)) in caches.iter_mut().enumerate() {
        let skip = (new - *appended) * shape.head_dim;
        for (r, row) in cache.rows.iter_mut().enumerate() {
            let (layer_kv, head) = (r / shape.kv_heads, r % shape.kv_heads);
            let start = ((layer_kv * batch + b) * shape.kv_heads + head) * row_len;
            row.extend_from_slice(&present[start + skip..start + row_len]);
        }
        cache.tokens += *appended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: CacheShape = CacheShape { layers: 1, kv_heads: 1, head_dim: 1 };

    #[test]
    fn sequences_of_different_lengths_are_left_padded_and_masked() {
        let mut short = SequenceCache::new(SHAPE);
        let mut long = SequenceCache::new(SHAPE);
        // Prefill: 1 token and 3 tokens; the model's present is [1, 2, 2, 1, 3, 1].
        let step = assemble(SHAPE, &[(&short, &[7]), (&long, &[1, 2, 3])]);
        assert_eq!((step.new, step.past), (3, 0));
        assert_eq!(step.input_ids, [0, 0, 7, 1, 2, 3]);
        assert_eq!(step.position_ids, [0, 0, 0, 0, 1, 2]);
        assert_eq!(step.attention_mask, [0, 0, 1, 1, 1, 1]);
        let present = [0.0, 0.0, 10.0, 21.0, 22.0, 23.0, 0.0, 0.0, -10.0, -21.0, -22.0, -23.0];
        append(SHAPE, &present, 3, &mut [(&mut short, 1), (&mut long, 3)]);
        assert_eq!((short.tokens(), long.tokens()), (1, 3));
        // Decode: one token each, the short cache left-padded to the long one.
        let step = assemble(SHAPE, &[(&short, &[8]), (&long, &[4])]);
        assert_eq!((step.new, step.past), (1, 3));
        assert_eq!(step.position_ids, [1, 3]);
        assert_eq!(step.attention_mask, [0, 0, 1, 1, 1, 1, 1, 1]);
        // [kv, batch, tokens]: keys then values.
        assert_eq!(
            step.past_values,
            [0.0, 0.0, 10.0, 21.0, 22.0, 23.0, 0.0, 0.0, -10.0, -21.0, -22.0, -23.0]
        );
    }
}
