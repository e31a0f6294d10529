//! The schemas of the gRPC messages the node decodes, for the walker in `wire`: each field's
//! kind, its cap (the protocol's bounds on tensors, dimensions and parameters, as over REST)
//! and what decoding it allocates. Sizes are what the decoded structures take; maps count
//! each entry twice (a hash table has room to spare), repeated fields twice their element (a
//! vector grows by doubling), and typed tensor contents once more for the tensor they are
//! copied into.

use std::mem::size_of;

use bytes::Bytes;

use super::proto;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::wire::{Kind, Rule, Schema};
use crate::http::protocol::{MAX_DIMENSIONS, MAX_PARAMETERS, MAX_TENSORS};

/// Elements of typed contents sent as separate byte strings (`bytes_contents`).
const MAX_BYTE_ELEMENTS: usize = 1024;

/// A varint scalar.
const fn scalar(number: u32, name: &'static str, size: usize, max: usize) -> Rule {
    Rule { number, name, kind: Kind::Scalars { size, width: None }, max }
}

/// A fixed-width scalar (`float`: 4 bytes, `double`: 8).
const fn fixed(number: u32, name: &'static str, width: usize, size: usize, max: usize) -> Rule {
    Rule { number, name, kind: Kind::Scalars { size, width: Some(width) }, max }
}

const fn data(number: u32, name: &'static str, overhead: usize, max: usize) -> Rule {
    Rule { number, name, kind: Kind::Data { overhead }, max }
}

const STRING: usize = size_of::<String>();

static INFER_PARAMETER: Schema = Schema {
    name: "InferParameter",
    fields: &[
        scalar(1, "bool_param", 0, usize::MAX),
        scalar(2, "int64_param", 0, usize::MAX),
        data(3, "string_param", 0, usize::MAX),
        fixed(4, "double_param", 8, 0, usize::MAX),
        scalar(5, "uint64_param", 0, usize::MAX),
    ],
};

static PARAMETER_ENTRY: Schema = Schema {
    name: "parameters entry",
    fields: &[
        data(1, "key", 0, usize::MAX),
        Rule { number: 2, name: "value", kind: Kind::Message { schema: &INFER_PARAMETER, size: 0 }, max: 1 },
    ],
};

const PARAMETERS_ENTRY_SIZE: usize = 2 * size_of::<(String, proto::InferParameter)>();

static CONTENTS: Schema = Schema {
    name: "InferTensorContents",
    fields: &[
        scalar(1, "bool_contents", 2 + 1, usize::MAX),
        scalar(2, "int_contents", 8 + 4, usize::MAX),
        scalar(3, "int64_contents", 16 + 8, usize::MAX),
        scalar(4, "uint_contents", 8 + 1, usize::MAX),
        scalar(5, "uint64_contents", 16 + 8, usize::MAX),
        fixed(6, "fp32_contents", 4, 4 + 4, usize::MAX),
        fixed(7, "fp64_contents", 8, 8 + 8, usize::MAX),
        data(8, "bytes_contents", 2 * size_of::<Bytes>(), MAX_BYTE_ELEMENTS),
    ],
};

static INPUT: Schema = Schema {
    name: "InferInputTensor",
    fields: &[
        data(1, "name", 0, usize::MAX),
        data(2, "datatype", 0, usize::MAX),
        scalar(3, "shape", 2 * size_of::<i64>() + size_of::<usize>(), MAX_DIMENSIONS),
        Rule {
            number: 4,
            name: "parameters",
            kind: Kind::Message { schema: &PARAMETER_ENTRY, size: PARAMETERS_ENTRY_SIZE },
            max: MAX_PARAMETERS,
        },
        Rule { number: 5, name: "contents", kind: Kind::Message { schema: &CONTENTS, size: 0 }, max: 1 },
    ],
};

static OUTPUT: Schema = Schema {
    name: "InferRequestedOutputTensor",
    fields: &[
        data(1, "name", 0, usize::MAX),
        Rule {
            number: 2,
            name: "parameters",
            kind: Kind::Message { schema: &PARAMETER_ENTRY, size: PARAMETERS_ENTRY_SIZE },
            max: MAX_PARAMETERS,
        },
    ],
};

/// `ModelInferRequest`, unary or streamed.
pub static MODEL_INFER_REQUEST: Schema = Schema {
    name: "ModelInferRequest",
    fields: &[
        Rule { number: 1, name: "model_name", kind: Kind::ModelName, max: 1 },
        data(2, "model_version", 0, usize::MAX),
        data(3, "id", STRING, usize::MAX),
        Rule {
            number: 4,
            name: "parameters",
            kind: Kind::Message { schema: &PARAMETER_ENTRY, size: PARAMETERS_ENTRY_SIZE },
            max: MAX_PARAMETERS,
        },
        Rule {
            number: 5,
            name: "inputs",
            kind: Kind::Message { schema: &INPUT, size: 2 * size_of::<InferInputTensor>() },
            max: MAX_TENSORS,
        },
        Rule {
            number: 6,
            name: "outputs",
            kind: Kind::Message { schema: &OUTPUT, size: 2 * size_of::<InferRequestedOutputTensor>() },
            max: MAX_TENSORS,
        },
        data(7, "raw_input_contents", 2 * size_of::<Bytes>(), MAX_TENSORS),
    ],
};

static REPOSITORY_PARAMETER: Schema = Schema {
    name: "ModelRepositoryParameter",
    fields: &[
        scalar(1, "bool_param", 0, usize::MAX),
        scalar(2, "int64_param", 0, usize::MAX),
        data(3, "string_param", 0, usize::MAX),
        data(4, "bytes_param", 0, usize::MAX),
    ],
};

static REPOSITORY_ENTRY: Schema = Schema {
    name: "parameters entry",
    fields: &[
        data(1, "key", 0, usize::MAX),
        Rule {
            number: 2,
            name: "value",
            kind: Kind::Message { schema: &REPOSITORY_PARAMETER, size: 0 },
            max: 1,
        },
    ],
};

/// `RepositoryModelLoadRequest` and `RepositoryModelUnloadRequest`.
pub static REPOSITORY_REQUEST: Schema = Schema {
    name: "RepositoryModelLoadRequest",
    fields: &[
        data(1, "repository_name", 0, usize::MAX),
        data(2, "model_name", 0, usize::MAX),
        Rule {
            number: 3,
            name: "parameters",
            kind: Kind::Message {
                schema: &REPOSITORY_ENTRY,
                size: 2 * size_of::<(String, proto::ModelRepositoryParameter)>(),
            },
            max: MAX_PARAMETERS,
        },
    ],
};

/// Any other request: small messages whose fields the walker does not look into (their
/// size is capped by the caller).
pub static OTHER_REQUEST: Schema = Schema { name: "request", fields: &[] };
