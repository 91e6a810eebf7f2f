//! The weight-blob codec. A blob is a safetensors file: named little-endian f32 tensors plus a
//! `__metadata__` map (`format`, `spec_id`, `role`). It is data only — no code runs on load —
//! and PyTorch reads it with `safetensors.torch.load_file`.
//!
//! Encoding is canonical (sorted JSON header, tensors in spec order, space padding to 8 bytes),
//! so the same weights always give the same bytes and the same sha256. Decoding is strict and
//! checks sizes *before* allocating: total size against the spec's cap, the declared header
//! length against the header cap; then the `safetensors` crate validates the structure, and
//! every tensor's name, dtype, shape and finiteness is checked against the spec.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::ids::SpecId;
use crate::spec::{ModelSpec, TensorSpec};
use crate::weights::{NamedTensor, Weights, WeightsError};

/// Value of the `format` metadata key this build writes and accepts.
pub const BLOB_FORMAT: &str = "yosegi.weights.v1";

/// What a blob is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobRole {
    /// The starting model of a task, derived from its spec and normalisation.
    Initial,
    /// A party's locally trained model.
    Update,
    /// A model merged and published by the coordinator.
    Merged,
}

impl BlobRole {
    /// The metadata spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobRole::Initial => "initial",
            BlobRole::Update => "update",
            BlobRole::Merged => "merged",
        }
    }
}

impl fmt::Display for BlobRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlobRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "initial" => Ok(Self::Initial),
            "update" => Ok(Self::Update),
            "merged" => Ok(Self::Merged),
            other => Err(other.to_string()),
        }
    }
}

/// Errors from decoding a blob. Each names what is at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlobError {
    /// The blob is larger than the spec allows.
    #[error("blob is {size} bytes; this spec allows at most {max}")]
    TooLarge {
        /// Bytes received.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// Shorter than its own size prefix or header says.
    #[error("blob is truncated: {0}")]
    Truncated(String),
    /// The header length prefix is over the cap.
    #[error("blob header declares {declared} bytes; this spec allows at most {max}")]
    HeaderTooLarge {
        /// The declared header length.
        declared: u64,
        /// The cap.
        max: u64,
    },
    /// The safetensors structure is invalid.
    #[error("blob is not valid safetensors: {0}")]
    Malformed(String),
    /// A metadata entry is missing or wrong.
    #[error("blob metadata `{key}`: expected {expected:?}, found {found:?}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What was expected.
        expected: String,
        /// What was found (`None` if absent).
        found: Option<String>,
    },
    /// A tensor is not f32.
    #[error("tensor `{name}`: expected dtype F32, found {found}")]
    WrongDtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        found: String,
    },
    /// The tensors do not match the spec.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// The metadata every blob carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// The spec the weights follow.
    pub spec_id: SpecId,
    /// What the blob is for.
    pub role: BlobRole,
    /// Names from the spec, for a reader without it (e.g. Python): `classes` (a JSON list)
    /// when the spec names its classes, `vocabularies` (a JSON object of lists) once the
    /// statistics step found the `discover` columns' categories. A decode requires exactly
    /// these (a blob of another vocabulary is another model); `medians` (a JSON object of
    /// numbers) once it found the `missing = "median"` columns' medians.
    pub names: BTreeMap<&'static str, String>,
}

/// The [`BlobMeta::names`] keys.
pub const NAME_KEYS: [&str; 3] = ["classes", "medians", "vocabularies"];

impl BlobMeta {
    /// The metadata of a blob of `spec` in `role`.
    pub fn new(spec: &ModelSpec, role: BlobRole) -> Self {
        let mut names = BTreeMap::new();
        if let Some(classes) = &spec.task.class_names {
            names.insert("classes", serde_json::to_string(classes).expect("json"));
        }
        let medians = spec.medians();
        if !medians.is_empty() {
            names.insert("medians", serde_json::to_string(&medians).expect("json"));
        }
        let vocabularies = spec.vocabularies();
        if !vocabularies.is_empty() {
            names.insert(
                "vocabularies",
                serde_json::to_string(&vocabularies).expect("json"),
            );
        }
        Self {
            spec_id: spec.id(),
            role,
            names,
        }
    }
}

/// The vocabularies a blob says its task's statistics step found (`vocabularies` metadata),
/// read before the blob is decoded: what [`ModelSpec::with_vocabularies`] needs to decode it.
/// `None` when the blob names none.
pub fn read_vocabularies(
    bytes: &[u8],
    limits: BlobLimits,
) -> Result<Option<BTreeMap<String, Vec<String>>>, BlobError> {
    read_found(
        bytes,
        limits,
        "vocabularies",
        "a JSON object of category lists",
    )
}

/// The medians a blob says its task's statistics step found (`medians` metadata).
pub fn read_medians(
    bytes: &[u8],
    limits: BlobLimits,
) -> Result<Option<BTreeMap<String, f64>>, BlobError> {
    read_found(bytes, limits, "medians", "a JSON object of numbers")
}

fn read_found<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    limits: BlobLimits,
    key: &'static str,
    what: &str,
) -> Result<Option<T>, BlobError> {
    let header = read_header(bytes, limits)?;
    let Some(text) = header.metadata().as_ref().and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| BlobError::Metadata {
            key,
            expected: format!("{what} ({e})"),
            found: Some(text.chars().take(200).collect()),
        })
}

/// `spec` as the blob's task found it ([`ModelSpec::resolved`]: vocabularies and medians from
/// the blob's metadata), or as it is when the spec finds nothing. Refused when the blob lacks
/// what the spec finds, or holds values that do not fit it.
pub fn spec_for(
    bytes: &[u8],
    spec: &ModelSpec,
    limits: BlobLimits,
) -> Result<ModelSpec, BlobError> {
    if !spec.finds() {
        return Ok(spec.clone());
    }
    let bad = |key: &'static str, expected: String| BlobError::Metadata {
        key,
        expected,
        found: None,
    };
    let vocabularies = match read_vocabularies(bytes, limits)? {
        Some(v) => v,
        None if spec.discovers() => {
            return Err(bad(
                "vocabularies",
                "the vocabularies of the spec's `discover` columns".into(),
            ));
        }
        None => BTreeMap::new(),
    };
    let medians = read_medians(bytes, limits)?.unwrap_or_default();
    spec.with_vocabularies(&vocabularies)
        .map_err(|e| {
            bad(
                "vocabularies",
                format!("vocabularies that fit the spec ({e})"),
            )
        })?
        .with_medians(&medians)
        .map_err(|e| bad("medians", format!("medians that fit the spec ({e})")))
}

/// Encodes tensors canonically as safetensors bytes.
pub fn encode_tensors(tensors: &[NamedTensor], meta: &BlobMeta) -> Vec<u8> {
    encode_tensors_with(tensors, meta, &BTreeMap::new())
}

/// [`encode_tensors`] with extra metadata entries (e.g. the `kind` of a composite model).
pub fn encode_tensors_with(
    tensors: &[NamedTensor],
    meta: &BlobMeta,
    extra: &BTreeMap<&str, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut metadata: BTreeMap<&str, String> = BTreeMap::from([
        ("format", BLOB_FORMAT.to_string()),
        ("role", meta.role.to_string()),
        ("spec_id", meta.spec_id.to_string()),
    ]);
    for (k, v) in meta.names.iter().chain(extra) {
        metadata.insert(k, v.clone());
    }
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).expect("strings serialise"),
    );
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + 4 * t.data.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // serde_json keeps keys sorted (BTreeMap) or, if some crate enables `preserve_order`, in
    // insertion order; either way the same weights give the same bytes.
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in tensors {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Encodes a model's weights.
pub fn encode(weights: &Weights, meta: &BlobMeta) -> Vec<u8> {
    encode_tensors(weights.tensors(), meta)
}

/// Size limits a decode enforces before it allocates anything.
#[derive(Clone, Copy, Debug)]
pub struct BlobLimits {
    /// Largest acceptable blob.
    pub max_bytes: u64,
    /// Largest acceptable declared header.
    pub max_header_bytes: u64,
}

impl BlobLimits {
    /// The limits a spec implies for a single model.
    pub fn for_spec(spec: &ModelSpec) -> Self {
        Self {
            max_bytes: spec.max_blob_bytes(),
            max_header_bytes: spec.max_header_bytes(),
        }
    }
}

/// The checks every decode makes before `safetensors` parses anything: the total size and
/// the declared header length against the caps, the header within the blob, and every
/// tensor's data offsets within the data (`safetensors` 0.8 adds the last offset to the
/// header length unchecked, which overflows — a panic where overflow checks are on — for
/// offsets near `u64::MAX`). Returns the parsed header.
pub(crate) fn read_header(bytes: &[u8], limits: BlobLimits) -> Result<Metadata, BlobError> {
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(BlobError::TooLarge {
            size,
            max: limits.max_bytes,
        });
    }
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlobError::Truncated(format!("{size} bytes, no 8-byte header length")))?;
    let declared = u64::from_le_bytes(prefix);
    if declared > limits.max_header_bytes {
        return Err(BlobError::HeaderTooLarge {
            declared,
            max: limits.max_header_bytes,
        });
    }
    if 8 + declared > size {
        return Err(BlobError::Truncated(format!(
            "header declares {declared} bytes but only {} follow",
            size - 8
        )));
    }
    let data_len = size - 8 - declared;
    // A header that is not a JSON object is left to safetensors to name.
    if let Ok(header) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
        &bytes[8..(8 + declared) as usize],
    ) {
        for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
            let offsets = info.get("data_offsets").and_then(|o| o.as_array());
            if let Some(past) = offsets
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_u64())
                .find(|&o| o > data_len)
            {
                return Err(BlobError::Malformed(format!(
                    "tensor `{name}`: data offset {past} is past the end of the {data_len} data bytes"
                )));
            }
        }
    }
    SafeTensors::read_metadata(bytes)
        .map(|(_, metadata)| metadata)
        .map_err(|e| BlobError::Malformed(e.to_string()))
}

/// Decodes tensors against an arbitrary layout; the building block of [`decode`].
pub fn decode_tensors(
    bytes: &[u8],
    layout: &[TensorSpec],
    limits: BlobLimits,
    expected: &BlobMeta,
) -> Result<Vec<NamedTensor>, BlobError> {
    let metadata = read_header(bytes, limits)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| BlobError::Malformed(e.to_string()))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    for (key, want) in [
        ("format", Some(BLOB_FORMAT.to_string())),
        ("spec_id", Some(expected.spec_id.to_string())),
        ("role", Some(expected.role.to_string())),
    ]
    .into_iter()
    .chain(NAME_KEYS.map(|k| (k, expected.names.get(k).cloned())))
    {
        let found = meta.get(key).cloned();
        // Names are JSON: equal values match whatever the writer's spacing or escapes.
        let json = |v: &Option<String>| {
            v.as_deref()
                .map(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        };
        let same = if NAME_KEYS.contains(&key) {
            json(&found) == json(&want) && !matches!(json(&found), Some(None))
        } else {
            found == want
        };
        if !same {
            return Err(BlobError::Metadata {
                key,
                expected: want.unwrap_or_else(|| "absent".into()),
                found,
            });
        }
    }
    // Names first, so a blob with an unexpected tensor is named before any data is copied.
    for name in st.names() {
        if !layout.iter().any(|t| t.name == name) {
            return Err(WeightsError::Unexpected {
                name: name.to_string(),
            }
            .into());
        }
    }
    let mut tensors = Vec::with_capacity(layout.len());
    for want in layout {
        let view = st.tensor(&want.name).map_err(|_| WeightsError::Missing {
            name: want.name.clone(),
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(BlobError::WrongDtype {
                name: want.name.clone(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != want.shape.as_slice() {
            return Err(WeightsError::WrongShape {
                name: want.name.clone(),
                expected: want.shape.clone(),
                found: view.shape().to_vec(),
            }
            .into());
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push(NamedTensor {
            name: want.name.clone(),
            shape: want.shape.clone(),
            data,
        });
    }
    Ok(tensors)
}

/// Decodes a single-model blob strictly against `spec`, expecting `role`.
pub fn decode(bytes: &[u8], spec: &ModelSpec, role: BlobRole) -> Result<Weights, BlobError> {
    decode_limited(bytes, spec, role, BlobLimits::for_spec(spec))
}

/// [`decode`] with explicit limits.
pub fn decode_limited(
    bytes: &[u8],
    spec: &ModelSpec,
    role: BlobRole,
    limits: BlobLimits,
) -> Result<Weights, BlobError> {
    let layout = spec.tensors();
    let tensors = decode_tensors(bytes, &layout, limits, &BlobMeta::new(spec, role))?;
    Ok(Weights::from_tensors(&layout, tensors)?)
}

/// Decodes one network whose layout is `layout_spec`'s but whose blob is of `spec` (a series
/// stage: wider than the task's network, still the task's spec).
pub fn decode_as(
    bytes: &[u8],
    layout_spec: &ModelSpec,
    spec: &ModelSpec,
    role: BlobRole,
) -> Result<Weights, BlobError> {
    let layout = layout_spec.tensors();
    let tensors = decode_tensors(
        bytes,
        &layout,
        BlobLimits::for_spec(layout_spec),
        &BlobMeta::new(spec, role),
    )?;
    Ok(Weights::from_tensors(&layout, tensors)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;
    use proptest::prelude::*;

    fn fixture() -> (ModelSpec, Weights, BlobMeta) {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        let w = Weights::initial(&spec, &Normalization::identity(3));
        let meta = BlobMeta::new(&spec, BlobRole::Update);
        (spec, w, meta)
    }

    /// Rewrites the header JSON of a blob (keeping the data) with `f`.
    pub(crate) fn rewrite_header(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        f(&mut header);
        let mut json = serde_json::to_vec(&header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend_from_slice(&bytes[8 + n..]);
        out
    }

    #[test]
    fn round_trip_is_exact_and_canonical() {
        let (spec, w, meta) = fixture();
        let bytes = encode(&w, &meta);
        assert_eq!(bytes, encode(&w, &meta), "encoding is deterministic");
        assert_eq!(bytes.len() % 4, 0);
        let back = decode(&bytes, &spec, BlobRole::Update).unwrap();
        assert_eq!(back, w);
        // The reference safetensors reader sees the same tensors and metadata.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[4, 3]);
    }

    #[test]
    fn wrong_role_or_spec_is_refused() {
        let (spec, w, meta) = fixture();
        let bytes = encode(&w, &meta);
        assert!(matches!(
            decode(&bytes, &spec, BlobRole::Merged),
            Err(BlobError::Metadata { key: "role", .. })
        ));
        let other = ModelSpec::parse(&SMALL.replace("seed = 3", "seed = 5"), "<t>").unwrap();
        assert!(matches!(
            decode(&bytes, &other, BlobRole::Update),
            Err(BlobError::Metadata { key: "spec_id", .. })
        ));
        let no_meta = rewrite_header(&bytes, |h| {
            h.as_object_mut().unwrap().remove("__metadata__");
        });
        assert!(matches!(
            decode(&no_meta, &spec, BlobRole::Update),
            Err(BlobError::Metadata {
                key: "format",
                found: None,
                ..
            })
        ));
    }

    #[test]
    fn size_caps_are_checked_before_parsing() {
        let (spec, w, meta) = fixture();
        let mut bytes = encode(&w, &meta);
        let max = spec.max_blob_bytes();
        let mut huge = bytes.clone();
        huge.resize(max as usize + 1, 0);
        assert!(matches!(
            decode(&huge, &spec, BlobRole::Update),
            Err(BlobError::TooLarge { .. })
        ));
        // a header length of 2^60 must be refused without allocating it
        bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode(&bytes, &spec, BlobRole::Update),
            Err(BlobError::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            decode(&[1, 2, 3], &spec, BlobRole::Update),
            Err(BlobError::Truncated(_))
        ));
        let good = encode(&w, &meta);
        assert!(matches!(
            decode(&good[..good.len() - 4], &spec, BlobRole::Update),
            Err(BlobError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode(&trailing, &spec, BlobRole::Update),
            Err(BlobError::Malformed(_))
        ));
    }

    /// Regression (found by the fuzzer, `tests/fuzz`): safetensors 0.8 adds the last data
    /// offset to the header length unchecked, so tensors chained up to `u64::MAX` overflowed
    /// (a panic with overflow checks on). Offsets past the data are refused first.
    #[test]
    fn offsets_past_the_data_are_refused_before_safetensors_adds_them() {
        let (spec, w, meta) = fixture();
        let bytes = encode(&w, &meta);
        let size = (1u64 << 61) - 1;
        let huge = rewrite_header(&bytes, |h| {
            let mut start = 0u64;
            for name in ["norm.mean", "norm.std", "layers.0.weight", "layers.0.bias"] {
                let end = start.saturating_add(size).min(u64::MAX - 7);
                h[name] = serde_json::json!({"dtype": "U8", "shape": [end - start], "data_offsets": [start, end]});
                start = end;
            }
        });
        let err = decode(&huge, &spec, BlobRole::Update).unwrap_err();
        assert!(
            err.to_string()
                .contains("is past the end of the 108 data bytes"),
            "{err}"
        );
    }

    #[test]
    fn every_tensor_failure_names_the_tensor() {
        let (spec, w, meta) = fixture();
        let bytes = encode(&w, &meta);
        let wrong_dtype = rewrite_header(&bytes, |h| {
            h["layers.1.bias"]["dtype"] = "I32".into();
        });
        let err = decode(&wrong_dtype, &spec, BlobRole::Update).unwrap_err();
        assert!(matches!(&err, BlobError::WrongDtype { name, .. } if name == "layers.1.bias"));
        assert!(err.to_string().contains("layers.1.bias"));

        let wrong_shape = rewrite_header(&bytes, |h| {
            h["layers.0.weight"]["shape"] = serde_json::json!([3, 4]);
        });
        let err = decode(&wrong_shape, &spec, BlobRole::Update).unwrap_err();
        assert!(
            err.to_string()
                .contains("tensor `layers.0.weight`: expected shape [4, 3]"),
            "{err}"
        );

        let renamed = rewrite_header(&bytes, |h| {
            let o = h.as_object_mut().unwrap();
            let t = o.remove("layers.1.bias").unwrap();
            o.insert("layers.1.bias_".into(), t);
        });
        let err = decode(&renamed, &spec, BlobRole::Update).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `layers.1.bias_` is not part of this spec"
        );

        let mut nan = w.tensors().to_vec();
        nan[4].data[1] = f32::INFINITY;
        let err = decode(&encode_tensors(&nan, &meta), &spec, BlobRole::Update).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tensor `layers.1.weight`: value inf at index 1"),
            "{err}"
        );
    }

    proptest! {
        /// Any finite weights survive encode → decode bit for bit.
        #[test]
        fn any_finite_weights_round_trip(values in prop::collection::vec(-1e30f32..1e30, 21)) {
            let (spec, w, meta) = fixture();
            let mut it = values.into_iter();
            let w = w.map_trainable(|t| t.data.iter().map(|_| it.next().unwrap()).collect()).unwrap();
            let back = decode(&encode(&w, &meta), &spec, BlobRole::Update).unwrap();
            prop_assert_eq!(back, w);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let (spec, _, _) = fixture();
            let _ = decode(&bytes, &spec, BlobRole::Update);
        }
    }
}
