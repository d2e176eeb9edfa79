//! Mutations of safetensors model files for `tests/fuzz_loaders.rs`: byte-level (bit flips,
//! interesting bytes, truncations, splices, deletions, the 8-byte header length) and structural
//! (the header's dtypes, shapes and data offsets, the metadata, the configuration JSON).

use serde_json::{json, Value};
use vlsa::weights::CONFIG_KEY;

use crate::common::Rng;

/// A safetensors file from a header value and the data bytes.
pub fn assemble(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits a well-formed file into its header value and data bytes.
pub fn disassemble(bytes: &[u8]) -> Option<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, bytes[8 + n..].to_vec()))
}

pub fn with_header_length(bytes: &[u8], length: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() < 8 {
        out.resize(8, 0);
    }
    out[..8].copy_from_slice(&length.to_le_bytes());
    out
}

/// Interesting values for sizes, offsets and counts.
fn interesting_number(rng: &mut Rng) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(7),
        json!(64),
        json!(65),
        json!(4097),
        json!(1_000_000),
        json!(1_000_000_000u64),
        json!(4_294_967_296u64),
        json!(1u64 << 62),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(1e300),
        json!(-1e300),
        json!("8"),
        json!(null),
        json!([]),
        json!({}),
        json!(true),
    ];
    choices[rng.below(choices.len())].clone()
}

/// Every path to a leaf (or to an object member) of a JSON value.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(k.clone());
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(i.to_string());
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'v>(v: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, key| match v {
        Value::Object(map) => map.get_mut(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

/// Mutates a JSON value: a member set to an interesting value, removed, duplicated under a new
/// name, or an unknown member added.
pub fn mutate_json(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    if all.is_empty() {
        *v = interesting_number(rng);
        return;
    }
    let path = all[rng.below(all.len())].clone();
    match rng.below(6) {
        0..=2 => {
            if let Some(slot) = at_path(v, &path) {
                *slot = interesting_number(rng);
            }
        }
        3 => {
            let (last, parent) = path.split_last().expect("non-empty path");
            match at_path(v, parent) {
                Some(Value::Object(map)) => {
                    map.remove(last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        4 => {
            if let Some(Value::Object(map)) = at_path(v, &path[..path.len() - 1]) {
                map.insert(format!("surprise_{}", rng.below(100)), interesting_number(rng));
            }
        }
        _ => {
            if let Some(slot) = at_path(v, &path) {
                *slot = match rng.below(4) {
                    0 => json!("\u{0}\u{fffd}é\"\\"),
                    1 => json!(vec!["x"; 300]),
                    2 => json!({"width": 8}),
                    _ => json!(vec![1e30; 3]),
                };
            }
        }
    }
}

/// Structured mutation of a safetensors file: the header's tensor entries, the metadata, or
/// the configuration inside it.
pub fn mutate_structure(rng: &mut Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut header, mut data) = disassemble(bytes)?;
    let map = header.as_object_mut()?;
    let names: Vec<String> = map.keys().filter(|k| k.as_str() != "__metadata__").cloned().collect();
    match rng.below(8) {
        // The configuration: parse, mutate, put back.
        0..=2 => {
            let meta = map.get_mut("__metadata__")?.as_object_mut()?;
            let mut config: Value = serde_json::from_str(meta.get(CONFIG_KEY)?.as_str()?).ok()?;
            for _ in 0..1 + rng.below(3) {
                mutate_json(rng, &mut config);
            }
            meta.insert(CONFIG_KEY.into(), Value::String(config.to_string()));
        }
        // A tensor's dtype, keeping or breaking the byte count.
        3 => {
            let name = names.get(rng.below(names.len().max(1)))?;
            let dtypes = ["F32", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL", "F8_E4M3", "F4", "XYZ"];
            map.get_mut(name)?["dtype"] = json!(dtypes[rng.below(dtypes.len())]);
        }
        // A tensor's shape: a huge, zero or negative dimension, or one more or fewer axes.
        4 => {
            let name = names.get(rng.below(names.len().max(1)))?;
            let shape = map.get_mut(name)?.get_mut("shape")?.as_array_mut()?;
            match rng.below(3) {
                0 if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    shape[i] = interesting_number(rng);
                }
                1 => shape.push(json!([1u64 << 62, 4, 0, 1][rng.below(4)])),
                _ => {
                    shape.pop();
                }
            }
        }
        // A tensor's data offsets: past the end, overlapping the previous tensor, reversed.
        5 => {
            let name = names.get(rng.below(names.len().max(1)))?;
            let offsets = map.get_mut(name)?.get_mut("data_offsets")?.as_array_mut()?;
            let (s, e) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
            let len = data.len() as u64;
            let (ns, ne) = match rng.below(5) {
                0 => (s, len + 4 + rng.below(1 << 20) as u64),
                1 => (s.saturating_sub(4), e.saturating_sub(4)),
                2 => (e, s),
                3 => (s, u64::MAX),
                _ => (rng.below(len as usize + 1) as u64, rng.below(len as usize + 1) as u64),
            };
            offsets[0] = json!(ns);
            offsets[1] = json!(ne);
        }
        // The metadata table: not strings, missing, or not an object.
        6 => {
            let choices =
                [json!({CONFIG_KEY: 5}), json!({}), json!("text"), json!({CONFIG_KEY: "{not json"}), json!(null)];
            map.insert("__metadata__".into(), choices[rng.below(choices.len())].clone());
        }
        // A tensor renamed, removed, or added.
        _ => {
            let name = names.get(rng.below(names.len().max(1)))?.clone();
            let entry = map.remove(&name)?;
            match rng.below(3) {
                0 => {
                    map.insert(format!("{name}.extra"), entry);
                }
                1 => {
                    // Removed, and its bytes left in place: the offsets no longer tile the data.
                }
                _ => {
                    map.insert(name.clone(), entry.clone());
                    let end = data.len() as u64;
                    map.insert(
                        format!("{name}.copy"),
                        json!({"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [end, end + 4]}),
                    );
                    data.extend_from_slice(&[0, 0, 0x80, 0x7f]);
                }
            }
        }
    }
    Some(assemble(&header, &data))
}

/// Byte-level mutation.
pub fn mutate_bytes(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let len = b.len();
    match rng.below(7) {
        0 if len > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            let special = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b',', b':', b'[', b'-', b'9', b'e', 0xc3];
            let i = rng.below(len);
            b[i] = special[rng.below(special.len())];
        }
        2 => b.truncate(rng.below(len + 1)),
        3 if len > 0 => {
            // Splice: a random chunk copied over another place, or inserted there.
            let (from, to) = (rng.below(len), rng.below(len));
            let chunk: Vec<u8> = b[from..(from + 1 + rng.below(64)).min(len)].to_vec();
            if rng.below(2) == 0 {
                let end = (to + chunk.len()).min(len);
                b[to..end].copy_from_slice(&chunk[..end - to]);
            } else {
                b.splice(to..to, chunk);
            }
        }
        4 if len > 0 => {
            let from = rng.below(len);
            b.drain(from..(from + 1 + rng.below(256)).min(len));
        }
        5 => {
            let real = u64::from_le_bytes(b.get(..8).and_then(|h| h.try_into().ok()).unwrap_or([0; 8]));
            let lengths = [
                0,
                1,
                7,
                8,
                real.wrapping_sub(1),
                real.wrapping_add(1),
                len as u64,
                (len as u64).wrapping_sub(8),
                100_000_001,
                u64::MAX,
                i64::MIN as u64,
                1 << 32,
                rng.next_u64(),
            ];
            b = with_header_length(&b, lengths[rng.below(lengths.len())]);
        }
        _ => {
            let at = rng.below(len + 1);
            let junk: Vec<u8> = (0..1 + rng.below(32)).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, junk);
        }
    }
    b
}
