//! gRPC messages checked as they arrive, before tonic buffers and decodes them: a streaming
//! walk over the length-prefixed frames and the protobuf wire format inside them, against a
//! schema of what the node decodes.
//!
//! Protobuf decoding can amplify: an empty repeated message is two bytes on the wire and a
//! few hundred once decoded, so a message well within any size limit can decode into
//! gigabytes. The walker counts every repeated field against its cap (too many: the call is
//! refused at that point, with what arrived so far), estimates what decoding will allocate
//! (struct sizes, strings, scalars as the decoded vectors hold them), and tells its
//! [`Observer`] as it goes: each message's declared length before any of its bytes, the
//! model it names, and the decoded bytes accrued, so the caller can refuse early and charge
//! the node's memory budget. It copies nothing but the model's name. The schemas of the
//! messages the node decodes are in `schemas`.

use bytes::Bytes;
use tonic::Status;

/// Longest model name read from a request.
const MAX_MODEL_NAME: usize = 256;

/// What a message type holds, as the walker checks it.
pub struct Schema {
    pub name: &'static str,
    pub fields: &'static [Rule],
}

/// One field of a [`Schema`].
pub struct Rule {
    pub number: u32,
    /// Its name, for errors.
    pub name: &'static str,
    pub kind: Kind,
    /// Occurrences (or, for scalars, elements) allowed in one message.
    pub max: usize,
}

/// How a field decodes.
pub enum Kind {
    /// A nested message (also a map entry), decoded into `size` bytes.
    Message { schema: &'static Schema, size: usize },
    /// A string or bytes field: its length, plus `overhead` bytes.
    Data { overhead: usize },
    /// The name of the model the request is for.
    ModelName,
    /// A scalar, repeated or not, packed or not: `size` bytes per element once decoded;
    /// `width` bytes per element on the wire when fixed (`float`, `double`), else a varint.
    Scalars { size: usize, width: Option<usize> },
}

/// Told what a walk finds.
pub trait Observer {
    /// A message of `length` bytes begins.
    fn message(&mut self, length: usize) -> Result<(), Status>;
    /// The message names the model `name`.
    fn model(&mut self, name: &str) -> Result<(), Status>;
    /// Decoding what was read so far takes `bytes` more.
    fn decoded(&mut self, bytes: usize) -> Result<(), Status>;
    /// The message is whole.
    fn finished(&mut self) -> Result<(), Status>;
}

/// The walk over one call's stream of messages.
pub struct Walker {
    schema: &'static Schema,
    /// The 5-byte prefix being read: the compression flag and the big-endian length.
    prefix: [u8; 5],
    prefix_read: usize,
    message: Option<MessageWalk>,
    /// Set once the walk refused: nothing more is read.
    failed: bool,
}

/// The walk through one message.
struct MessageWalk {
    length: usize,
    /// Bytes of it read.
    position: usize,
    /// The messages we are inside, outermost first.
    levels: Vec<Level>,
    token: Token,
}

struct Level {
    schema: &'static Schema,
    /// Where it ends, in bytes from the start of the gRPC message.
    end: usize,
    /// Occurrences (elements for scalars) of each rule so far.
    counts: Vec<usize>,
}

/// What the walk is in the middle of reading.
enum Token {
    Tag { value: u64, shift: u32 },
    Varint,
    Fixed { left: usize },
    Length { value: u64, shift: u32, rule: Option<usize> },
    Payload { left: usize, payload: Payload },
}

enum Payload {
    Skip,
    Name(Vec<u8>),
    /// Packed varints: elements counted by their last bytes, each `size` bytes decoded.
    PackedVarints {
        rule: usize,
        size: usize,
    },
}

impl Walker {
    pub fn new(schema: &'static Schema) -> Walker {
        Walker { schema, prefix: [0; 5], prefix_read: 0, message: None, failed: false }
    }

    /// Reads `chunk`, the next bytes of the call's body.
    pub fn feed(&mut self, chunk: &Bytes, observer: &mut impl Observer) -> Result<(), Status> {
        if self.failed {
            return Err(Status::internal("the call was already refused"));
        }
        let fed = self.feed_inner(chunk, observer);
        self.failed = fed.is_err();
        fed
    }

    fn feed_inner(&mut self, chunk: &[u8], observer: &mut impl Observer) -> Result<(), Status> {
        let mut rest = chunk;
        while !rest.is_empty() {
            match &mut self.message {
                None => {
                    let take = (5 - self.prefix_read).min(rest.len());
                    self.prefix[self.prefix_read..self.prefix_read + take].copy_from_slice(&rest[..take]);
                    self.prefix_read += take;
                    rest = &rest[take..];
                    if self.prefix_read == 5 {
                        self.start_message(observer)?;
                    }
                }
                Some(walk) => {
                    let take = (walk.length - walk.position).min(rest.len());
                    walk.read(&rest[..take], observer)?;
                    rest = &rest[take..];
                    if walk.position == walk.length {
                        walk.finish()?;
                        self.message = None;
                        observer.finished()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_message(&mut self, observer: &mut impl Observer) -> Result<(), Status> {
        self.prefix_read = 0;
        if self.prefix[0] != 0 {
            return Err(Status::unimplemented("compressed messages are not accepted"));
        }
        let length = u32::from_be_bytes(self.prefix[1..].try_into().expect("four bytes")) as usize;
        observer.message(length)?;
        if length == 0 {
            return observer.finished();
        }
        let top = Level { schema: self.schema, end: length, counts: vec![0; self.schema.fields.len()] };
        self.message = Some(MessageWalk {
            length,
            position: 0,
            levels: vec![top],
            token: Token::Tag { value: 0, shift: 0 },
        });
        Ok(())
    }
}

fn malformed(what: &str) -> Status {
    Status::invalid_argument(format!("malformed message: {what}"))
}

/// What to do once a step of the walk has let go of the token it read.
enum After {
    Nothing,
    /// A tag is complete.
    Tag(u64),
    /// A length is complete, for the rule it belongs to.
    Length(u64, Option<usize>),
    /// A payload is complete.
    Payload(Payload),
    /// A scalar is complete: the next field starts.
    NextField,
}

impl MessageWalk {
    /// Reads `bytes`, all within this message.
    fn read(&mut self, mut bytes: &[u8], observer: &mut impl Observer) -> Result<(), Status> {
        while !bytes.is_empty() {
            let end = self.levels.last().expect("inside the message").end;
            let in_level = (end - self.position).min(bytes.len());
            let (used, after) = match &mut self.token {
                Token::Payload { left, payload } => {
                    let take = (*left).min(in_level);
                    match payload {
                        Payload::Skip => {}
                        Payload::Name(name) => name.extend_from_slice(&bytes[..take]),
                        Payload::PackedVarints { rule, size } => {
                            let elements = bytes[..take].iter().filter(|&&b| b < 0x80).count();
                            count(&mut self.levels, *rule, elements)?;
                            observer.decoded(elements * *size)?;
                        }
                    }
                    *left -= take;
                    let after = match *left {
                        0 => After::Payload(std::mem::replace(payload, Payload::Skip)),
                        _ => After::Nothing,
                    };
                    (take, after)
                }
                Token::Fixed { left } => {
                    let take = (*left).min(in_level);
                    *left -= take;
                    (take, if *left == 0 { After::NextField } else { After::Nothing })
                }
                Token::Varint => (1, if bytes[0] < 0x80 { After::NextField } else { After::Nothing }),
                Token::Tag { value, shift } => {
                    let done = varint_byte(value, shift, bytes[0])?;
                    (1, if done { After::Tag(*value) } else { After::Nothing })
                }
                Token::Length { value, shift, rule } => {
                    let done = varint_byte(value, shift, bytes[0])?;
                    (1, if done { After::Length(*value, *rule) } else { After::Nothing })
                }
            };
            match after {
                After::Nothing => {}
                After::NextField => self.token = Token::Tag { value: 0, shift: 0 },
                After::Tag(tag) => self.tag(tag, observer)?,
                After::Length(length, rule) => self.length(length, rule, observer)?,
                After::Payload(payload) => self.end_payload(payload, observer)?,
            }
            self.position += used;
            bytes = &bytes[used..];
            self.close_levels()?;
        }
        Ok(())
    }

    /// A field's tag: what follows.
    fn tag(&mut self, tag: u64, observer: &mut impl Observer) -> Result<(), Status> {
        let number = u32::try_from(tag >> 3).map_err(|_| malformed("a field number out of range"))?;
        let schema = self.levels.last().expect("inside").schema;
        let rule = schema.fields.iter().position(|rule| rule.number == number);
        self.token = match tag & 7 {
            wire @ (0 | 1 | 5) => {
                if let Some(index) = rule
                    && let Kind::Scalars { size, .. } = schema.fields[index].kind
                {
                    count(&mut self.levels, index, 1)?;
                    observer.decoded(size)?;
                }
                match wire {
                    0 => Token::Varint,
                    1 => Token::Fixed { left: 8 },
                    _ => Token::Fixed { left: 4 },
                }
            }
            2 => Token::Length { value: 0, shift: 0, rule },
            _ => return Err(malformed("a wire type that is not used (groups, or reserved)")),
        };
        Ok(())
    }

    /// A length-delimited field's length (its last byte is at `position`): a nested message,
    /// data, the model's name, or packed scalars.
    fn length(
        &mut self,
        length: u64,
        rule: Option<usize>,
        observer: &mut impl Observer,
    ) -> Result<(), Status> {
        let level = self.levels.last().expect("inside");
        let (end, schema) = (level.end, level.schema);
        let start = self.position + 1;
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= end - start)
            .ok_or_else(|| malformed("a field longer than what holds it"))?;
        let payload = match rule.map(|index| (index, &schema.fields[index].kind)) {
            None => Payload::Skip,
            Some((index, Kind::Message { schema: inner, size })) => {
                count(&mut self.levels, index, 1)?;
                observer.decoded(*size)?;
                let counts = vec![0; inner.fields.len()];
                self.levels.push(Level { schema: inner, end: start + length, counts });
                self.token = Token::Tag { value: 0, shift: 0 };
                return Ok(());
            }
            Some((index, Kind::Data { overhead })) => {
                count(&mut self.levels, index, 1)?;
                observer.decoded(length + overhead)?;
                Payload::Skip
            }
            Some((index, Kind::ModelName)) => {
                count(&mut self.levels, index, 1)?;
                if length > MAX_MODEL_NAME {
                    return Err(Status::invalid_argument(format!(
                        "a model name is at most {MAX_MODEL_NAME} bytes"
                    )));
                }
                Payload::Name(Vec::with_capacity(length))
            }
            Some((index, Kind::Scalars { size, width: Some(width) })) => {
                // Packed fixed-width elements: counted by their length.
                if length % width != 0 {
                    return Err(malformed("packed fixed-width elements of a length that does not divide"));
                }
                count(&mut self.levels, index, length / width)?;
                observer.decoded(length / width * size)?;
                Payload::Skip
            }
            Some((index, Kind::Scalars { size, width: None })) => {
                Payload::PackedVarints { rule: index, size: *size }
            }
        };
        if length == 0 {
            return self.end_payload(payload, observer);
        }
        self.token = Token::Payload { left: length, payload };
        Ok(())
    }

    /// A payload read whole: the model's name is told; the next field starts.
    fn end_payload(&mut self, payload: Payload, observer: &mut impl Observer) -> Result<(), Status> {
        if let Payload::Name(name) = payload {
            observer.model(&String::from_utf8_lossy(&name))?;
        }
        self.token = Token::Tag { value: 0, shift: 0 };
        Ok(())
    }

    /// Leaves the nested messages that end here.
    fn close_levels(&mut self) -> Result<(), Status> {
        while self.levels.len() > 1 && self.levels.last().is_some_and(|level| level.end == self.position) {
            if !matches!(self.token, Token::Tag { shift: 0, .. }) {
                return Err(malformed("a field cut off at the end of its message"));
            }
            self.levels.pop();
        }
        Ok(())
    }

    /// Checks that the message ended between fields.
    fn finish(&self) -> Result<(), Status> {
        match (&self.token, self.levels.len()) {
            (Token::Tag { shift: 0, .. }, 1) => Ok(()),
            _ => Err(malformed("it ends inside a field")),
        }
    }
}

/// Counts `n` more of rule `index` in the innermost message of `levels`, within its cap.
fn count(levels: &mut [Level], index: usize, n: usize) -> Result<(), Status> {
    let level = levels.last_mut().expect("inside");
    let rule = &level.schema.fields[index];
    level.counts[index] += n;
    if level.counts[index] > rule.max {
        return Err(Status::invalid_argument(format!(
            "{}.{}: at most {} in one message",
            level.schema.name, rule.name, rule.max
        )));
    }
    Ok(())
}

/// Adds one byte to a varint being read; true once it is complete.
fn varint_byte(value: &mut u64, shift: &mut u32, byte: u8) -> Result<bool, Status> {
    if *shift >= 64 {
        return Err(malformed("a varint longer than ten bytes"));
    }
    *value |= u64::from(byte & 0x7f) << *shift;
    *shift += 7;
    Ok(byte < 0x80)
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use prost::Message;

    use super::*;
    use crate::http::grpc::proto::model_infer_request::InferInputTensor;
    use crate::http::grpc::proto::{InferTensorContents, ModelInferRequest};
    use crate::http::grpc::schemas::MODEL_INFER_REQUEST;

    /// Records what a walk tells.
    #[derive(Default, Debug, PartialEq)]
    struct Seen {
        messages: Vec<usize>,
        models: Vec<String>,
        decoded: usize,
        finished: usize,
    }

    impl Observer for Seen {
        fn message(&mut self, length: usize) -> Result<(), Status> {
            self.messages.push(length);
            Ok(())
        }
        fn model(&mut self, name: &str) -> Result<(), Status> {
            self.models.push(name.to_string());
            Ok(())
        }
        fn decoded(&mut self, bytes: usize) -> Result<(), Status> {
            self.decoded += bytes;
            Ok(())
        }
        fn finished(&mut self) -> Result<(), Status> {
            self.finished += 1;
            Ok(())
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend((body.len() as u32).to_be_bytes());
        frame.extend(body);
        frame
    }

    /// Walks `bytes` fed `step` bytes at a time.
    fn walk(bytes: &[u8], step: usize) -> (Result<(), Status>, Seen) {
        let mut walker = Walker::new(&MODEL_INFER_REQUEST);
        let mut seen = Seen::default();
        for chunk in bytes.chunks(step.max(1)) {
            if let Err(status) = walker.feed(&Bytes::copy_from_slice(chunk), &mut seen) {
                return (Err(status), seen);
            }
        }
        (Ok(()), seen)
    }

    fn request() -> ModelInferRequest {
        ModelInferRequest {
            model_name: "digits".into(),
            id: "seven".into(),
            inputs: vec![InferInputTensor {
                name: "pixels".into(),
                datatype: "FP32".into(),
                shape: vec![1, 64],
                contents: Some(InferTensorContents { fp32_contents: vec![0.5; 64], ..Default::default() }),
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(vec![7u8; 300])],
            ..Default::default()
        }
    }

    #[test]
    fn real_messages_walk_alike_however_they_are_cut() {
        let mut bytes = framed(&request());
        bytes.extend(framed(&ModelInferRequest { model_name: "vad".into(), ..Default::default() }));
        let (whole, seen) = walk(&bytes, bytes.len());
        whole.unwrap();
        assert_eq!(seen.models, ["digits", "vad"]);
        assert_eq!(seen.finished, 2);
        // The 64 floats and their tensor, the shape, the raw bytes' handle, the input's struct.
        assert!(seen.decoded >= 64 * 8 + 300, "{seen:?}");
        for step in [1, 2, 3, 7, 64] {
            let (cut, cut_seen) = walk(&bytes, step);
            cut.unwrap();
            assert_eq!(cut_seen, seen, "fed {step} bytes at a time");
        }
    }

    #[test]
    fn millions_of_empty_inputs_are_refused_after_the_cap() {
        let flood =
            ModelInferRequest { inputs: vec![InferInputTensor::default(); 100_000], ..Default::default() };
        let bytes = framed(&flood);
        let (refused, seen) = walk(&bytes, 16 * 1024);
        let status = refused.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("inputs: at most 64"), "{}", status.message());
        assert_eq!(seen.messages, [bytes.len() - 5], "the length was told before any of the message");
        assert!(seen.decoded < 64 * 2 * size_of::<InferInputTensor>() + 1000);
    }

    #[test]
    fn packed_floats_are_counted_by_their_length_whatever_their_bytes() {
        let contents =
            |value: f32| InferTensorContents { fp32_contents: vec![value; 1000], ..Default::default() };
        let message = |value| ModelInferRequest {
            inputs: vec![InferInputTensor { contents: Some(contents(value)), ..Default::default() }],
            ..Default::default()
        };
        // A NaN whose bytes are all ff (no byte would end a varint) and 1.0 (00 00 80 3f) alike.
        let nan = walk(&framed(&message(f32::from_bits(u32::MAX))), 7);
        let one = walk(&framed(&message(1.0)), 7);
        nan.0.unwrap();
        one.0.unwrap();
        assert_eq!(nan.1.decoded, one.1.decoded);
        assert!(nan.1.decoded >= 1000 * 8, "{:?}", nan.1);
    }

    #[test]
    fn malformed_and_compressed_messages_are_refused() {
        let mut bytes = framed(&request());
        // Make the first field's length run past the message.
        bytes[6] = 0x7f;
        assert_eq!(walk(&bytes, 5).0.unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut compressed = framed(&request());
        compressed[0] = 1;
        assert_eq!(walk(&compressed, 100).0.unwrap_err().code(), tonic::Code::Unimplemented);
        let group = [0u8, 0, 0, 0, 1, 0x0b];
        assert_eq!(walk(&group, 1).0.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
