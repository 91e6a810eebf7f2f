//! Inputs the fuzzer found that once crashed or fooled a decoder, each pinned by name. The
//! inputs are the fuzzer's exact ones, stored as hex in `regressions/`.

use shared_model::blob::{self, BlobError, BlobRole};
use shared_model::model::{Model, stage_spec};
use shared_model::spec::ModelSpec;

use crate::fixtures;

fn input(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text.trim()).unwrap()
}

/// An ensemble blob whose tensors (but the first) were made huge with consistent offsets, the
/// last ending at `u64::MAX`: `safetensors` 0.8 added that offset to the header length
/// unchecked — "attempt to add with overflow", a panic where overflow checks are on (debug and
/// test builds), reachable from any upload or download. Found by `fuzz_composite_model_blobs`.
#[test]
fn tensor_offsets_near_u64_max_are_refused_without_overflow() {
    let bytes = input(include_str!("regressions/offsets_past_u64_max.hex"));
    let spec = fixtures::spec();
    for role in [BlobRole::Initial, BlobRole::Update, BlobRole::Merged] {
        let e = Model::decode(&bytes, &spec, role).unwrap_err();
        assert!(
            matches!(&e, BlobError::Malformed(m) if m.contains("is past the end of the")),
            "{e}"
        );
        assert!(blob::decode(&bytes, &spec, role).is_err());
        assert!(blob::decode_as(&bytes, &stage_spec(&spec, 1), &spec, role).is_err());
    }
}

/// An ensemble whose two member weights are 1e308 each: finite one by one, infinite in sum,
/// so `Model::predict` divided by ∞ and predicted 0 for every row. Found by
/// `fuzz_composite_model_blobs`.
#[test]
fn ensemble_weights_that_sum_to_infinity_are_refused() {
    let bytes = input(include_str!(
        "regressions/ensemble_weights_sum_to_infinity.hex"
    ));
    let e = Model::decode(&bytes, &fixtures::spec(), BlobRole::Merged).unwrap_err();
    assert!(
        matches!(e, BlobError::Metadata { key: "members", .. }),
        "{e}"
    );
}

/// A spec with a feature named with a DEL character (written `\u007f` in the TOML) parsed,
/// but `ModelSpec::to_toml` wrote the DEL raw, which TOML forbids: the spec the coordinator
/// hands out (the demo sends `to_toml`) no longer parsed. Found by `fuzz_model_specs`.
#[test]
fn to_toml_escapes_del_so_the_spec_parses_back() {
    let text = String::from_utf8(input(include_str!(
        "regressions/spec_feature_with_del_character.hex"
    )))
    .unwrap();
    let spec = ModelSpec::parse(&text, "<regression>").unwrap();
    assert!(spec.task.features.iter().any(|f| f.contains('\u{7f}')));
    let back = ModelSpec::parse(&spec.to_toml(), "<to_toml>").unwrap();
    assert_eq!(back, spec);
    assert_eq!(back.id(), spec.id());
}
