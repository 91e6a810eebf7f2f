//! Input generation: random bytes, generic byte-level mutations (bit flips, truncation,
//! insertion, deletion, duplication, splicing, dictionary tokens), and structure-aware edits of
//! safetensors blobs (the 8-byte header length, the JSON header's shapes, dtypes, offsets and
//! metadata, non-finite data) that say whether the result must be refused.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Largest input the fuzzer builds.
pub const MAX_INPUT: usize = 64 * 1024;

/// Tokens that steer JSON, TOML and CSV parsers into their corner cases.
pub const TOKENS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "1.5",
    "1e308",
    "-1e308",
    "1e309",
    "1e39",
    "5e-324",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "2305843009213693951",
    "4294967296",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"",
    "'",
    "\\",
    "\\u0000",
    "\\u007f",
    "\u{7f}",
    "\u{0}",
    "\r",
    "\r\n",
    "\n",
    ",",
    ",,",
    ":",
    "=",
    "[",
    "]",
    "{",
    "}",
    "[[",
    "#",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "\"F32\"",
    "\"F16\"",
    "\"F64\"",
    "\"I32\"",
    "\"BOOL\"",
    "\"F4\"",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"__metadata__\"",
    "\"kind\"",
    "\"ensemble\"",
    "\"series\"",
    "\"members\"",
    "\"stages\"",
    "\"role\"",
    "\"merged\"",
    "\"update\"",
];

/// A uniformly random byte string of up to `max` bytes.
pub fn random_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.random_range(0..=max)];
    rng.fill_bytes(&mut v);
    v
}

fn pos(rng: &mut ChaCha8Rng, len: usize) -> usize {
    rng.random_range(0..=len)
}

/// One to four generic byte-level mutations; `corpus` supplies splice partners.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = *[
                    0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b',', b'-', b'9',
                ]
                .get(rng.random_range(0..11))
                .unwrap();
            }
            2 => input.truncate(pos(rng, len)),
            3 => {
                let at = pos(rng, len);
                let bytes = random_bytes(rng, 16);
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16.min(len - a))).min(len);
                input.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let copy = input[a..b].to_vec();
                let at = pos(rng, len);
                input.splice(at..at, copy);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let cut = pos(rng, len);
                let from = pos(rng, other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 | 8 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                let at = pos(rng, len);
                if rng.random_bool(0.5) {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            _ => {
                // a run of one byte, e.g. deep nesting or a long field
                let at = pos(rng, len);
                let b = *[b'[', b'{', b'"', b'9', b' ', b','][..]
                    .get(rng.random_range(0..6))
                    .unwrap();
                let n = rng.random_range(1..=4096);
                input.splice(at..at, std::iter::repeat_n(b, n));
            }
        }
    }
    input.truncate(MAX_INPUT);
}

/// A safetensors file split into its JSON header and data.
pub struct Blob {
    /// The header.
    pub header: Value,
    /// The bytes after the header.
    pub data: Vec<u8>,
}

impl Blob {
    /// Splits a well-formed blob (the corpus's).
    pub fn parse(bytes: &[u8]) -> Option<Blob> {
        let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        Some(Blob {
            header,
            data: bytes[8 + n..].to_vec(),
        })
    }

    /// Joins header and data, padding the header to 8 bytes as the encoder does.
    pub fn bytes(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(&self.header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend_from_slice(&self.data);
        out
    }

    /// Tensor names, sorted by data offset.
    fn tensors(&self) -> Vec<String> {
        let mut t: Vec<(u64, String)> = self
            .header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap_or(0), k.clone()))
            .collect();
        t.sort();
        t.into_iter().map(|(_, k)| k).collect()
    }
}

fn pick<T: Clone>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

/// Huge and odd numbers for shapes and offsets (some do not fit a u64 and stay JSON floats).
fn odd_number(rng: &mut ChaCha8Rng) -> Value {
    pick(
        rng,
        &[
            json!(0),
            json!(-1),
            json!(1),
            json!(3),
            json!(1.5),
            json!(u32::MAX),
            json!(1u64 << 32),
            json!((1u64 << 61) - 1),
            json!(1u64 << 62),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e20),
            json!("7"),
            Value::Null,
        ],
    )
}

/// One structure-aware edit of a well-formed blob. Returns the new bytes and whether every
/// correct strict decoder must refuse them (`true` when the edit changes something the
/// decoder checks: the length prefix, a shape, a dtype, offsets, the tensor set, the
/// `format`/`role`/`spec_id` metadata, or a value to a non-finite one).
pub fn mutate_blob(rng: &mut ChaCha8Rng, bytes: &[u8]) -> (Vec<u8>, bool) {
    let Some(mut blob) = Blob::parse(bytes) else {
        return (bytes.to_vec(), false);
    };
    let names = blob.tensors();
    let name = pick(rng, &names);
    let mut must_fail = true;
    match rng.random_range(0..9) {
        0 => {
            // the header length prefix
            let mut out = bytes.to_vec();
            let n = u64::from_le_bytes(out[..8].try_into().unwrap());
            let len = out.len() as u64;
            let v = pick(
                rng,
                &[
                    0,
                    1,
                    7,
                    n.wrapping_sub(1),
                    n + 1,
                    n + 8,
                    n.wrapping_sub(8),
                    len,
                    len - 8,
                    len - 7,
                    1 << 32,
                    1 << 63,
                    u64::MAX,
                    u64::MAX - 7,
                ],
            );
            out[..8].copy_from_slice(&v.to_le_bytes());
            return (out, v != n);
        }
        1 => {
            // a shape
            let old = blob.header[&name]["shape"].clone();
            let new = match rng.random_range(0..5) {
                0 => json!([]),
                1 => json!([0]),
                2 => Value::Array(vec![odd_number(rng)]),
                3 => json!([(1u64 << 32), (1u64 << 32)]),
                _ => {
                    let mut s = old.as_array().unwrap().clone();
                    s.push(json!(1));
                    Value::Array(s)
                }
            };
            must_fail = new != old;
            blob.header[&name]["shape"] = new;
        }
        2 => {
            let d = pick(
                rng,
                &[
                    "F16", "BF16", "F64", "I32", "U32", "I8", "BOOL", "F4", "F8_E4M3", "X", "",
                ],
            );
            blob.header[&name]["dtype"] = json!(d);
        }
        3 => {
            // offsets: one of them odd, or swapped, or a begin past the end
            let o = blob.header[&name]["data_offsets"].clone();
            let (s, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
            let new = match rng.random_range(0..4) {
                0 => json!([e, s]),
                1 => Value::Array(vec![odd_number(rng), json!(e)]),
                2 => Value::Array(vec![json!(s), odd_number(rng)]),
                _ => json!([s, e + 4]),
            };
            must_fail = new != o && !(s == e && new == json!([e, s]));
            blob.header[&name]["data_offsets"] = new;
        }
        4 => {
            // every tensor (but the first) made huge, offsets kept consistent: the size checks
            // must come from the decoder, not from safetensors' offset validation
            let size = pick(
                rng,
                &[1u64 << 32, (1u64 << 61) - 1, 1u64 << 60, (1u64 << 62) / 3],
            );
            let mut start = blob.header[&names[0]]["data_offsets"][1].as_u64().unwrap();
            for n in &names[1..] {
                let end = start.saturating_add(size);
                blob.header[n]["dtype"] = json!("U8");
                blob.header[n]["shape"] = json!([end - start]);
                blob.header[n]["data_offsets"] = json!([start, end]);
                start = end;
            }
        }
        5 => {
            // remove or add a tensor
            let o = blob.header.as_object_mut().unwrap();
            if rng.random_bool(0.5) {
                o.remove(&name);
            } else {
                let t = o[&name].clone();
                o.insert(format!("{name}.copy"), t);
            }
        }
        6 => {
            // metadata
            let key = pick(
                rng,
                &[
                    "format", "role", "spec_id", "kind", "members", "stages", "extra",
                ],
            );
            let value = pick(
                rng,
                &[
                    json!("0"),
                    json!("65"),
                    json!("-1"),
                    json!("99999999999999999999"),
                    json!("series"),
                    json!("ensemble"),
                    json!("merged"),
                    json!("update"),
                    json!("[]"),
                    json!(r#"[{"party":"a","weight":1e308},{"party":"b","weight":1e308}]"#),
                    json!(r#"[{"party":"a","weight":5e-324},{"party":"b","weight":1}]"#),
                    json!(r#"[{"party":"","weight":1},{"party":"b","weight":-1}]"#),
                    json!(1),
                    Value::Null,
                ],
            );
            let meta = &mut blob.header["__metadata__"];
            let old = meta.get(key).cloned();
            // The decoders are tried in every role, so only a role that is none of them fails.
            let roles = [json!("initial"), json!("update"), json!("merged")];
            must_fail = old.as_ref() != Some(&value)
                && match key {
                    "format" | "spec_id" => true,
                    "role" => !roles.contains(&value),
                    _ => false,
                };
            if rng.random_bool(0.2) {
                blob.header.as_object_mut().unwrap().remove("__metadata__");
                must_fail = true;
            } else {
                meta[key] = value;
            }
        }
        7 if blob.data.len() >= 4 => {
            // a non-finite value somewhere in the data (every data byte belongs to a tensor)
            let i = rng.random_range(0..blob.data.len() / 4) * 4;
            let v = pick(rng, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            blob.data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => {
            // trailing or missing data
            if rng.random_bool(0.5) {
                blob.data.extend_from_slice(&[0; 4]);
            } else {
                let keep = rng.random_range(0..blob.data.len().max(1));
                blob.data.truncate(keep);
            }
        }
    }
    (blob.bytes(), must_fail)
}
