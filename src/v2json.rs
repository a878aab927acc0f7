//! Decoding of KServe v2 (Open Inference Protocol) JSON inference requests, for the HTTP hot path.
//!
//! serde_json walks the structure and hands over each input's `data` as raw, already validated JSON
//! text; a flattening scanner then turns that text straight into a `Vec<f32>` (row-major, nested arrays
//! flattened) with fast-float2, so no intermediate JSON values or Python floats are ever made.
//! Numbers are parsed to f64 and then rounded to f32, as `np.asarray(json.loads(...), np.float32)` does.

use core::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One decoded input tensor; `data` is None when the values travel in the binary extension.
#[derive(Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Option<Vec<f32>>,
}

/// A decoded request: its id (if any) and its inputs, in order.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
}

/// Everything that makes a request unusable; the message is what the client sees.
#[derive(Debug, PartialEq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decode a v2 inference request body.
pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = RequestSeed
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| DecodeError(format!("invalid JSON request body: {e}")))?;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for (i, input) in raw.inputs.into_iter().enumerate() {
        inputs.push(input.finish(i)?);
    }
    Ok(Request { id: raw.id, inputs })
}

// ---- structure, through serde_json -------------------------------------------------------------

struct RawRequest<'a> {
    id: Option<String>,
    inputs: Vec<RawInput<'a>>,
}

#[derive(Default)]
struct RawInput<'a> {
    name: Option<String>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    data: Option<&'a RawValue>,
    binary_data: bool,
}

/// Field names matched without allocating.
enum Field {
    Id,
    Inputs,
    Name,
    Shape,
    Datatype,
    Data,
    Parameters,
    BinaryDataSize,
    Other,
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(match v {
            "id" => Field::Id,
            "inputs" => Field::Inputs,
            "name" => Field::Name,
            "shape" => Field::Shape,
            "datatype" => Field::Datatype,
            "data" => Field::Data,
            "parameters" => Field::Parameters,
            "binary_data_size" => Field::BinaryDataSize,
            _ => Field::Other,
        })
    }
}

struct RequestSeed;

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RawRequest<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RawRequest<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KServe v2 inference request object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut inputs = None;
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match field {
                Field::Id => id = map.next_value::<Option<String>>()?,
                Field::Inputs => inputs = Some(map.next_value_seed(InputsSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let inputs = inputs.ok_or_else(|| de::Error::custom("missing field 'inputs'"))?;
        Ok(RawRequest { id, inputs })
    }
}

struct InputsSeed;

impl<'de> DeserializeSeed<'de> for InputsSeed {
    type Value = Vec<RawInput<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed {
    type Value = Vec<RawInput<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'inputs' as a list of tensor objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut inputs = Vec::new();
        while let Some(input) = seq.next_element_seed(InputSeed)? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

struct InputSeed;

impl<'de> DeserializeSeed<'de> for InputSeed {
    type Value = RawInput<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InputSeed {
    type Value = RawInput<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input tensor object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut input = RawInput::default();
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match field {
                Field::Name => input.name = Some(map.next_value()?),
                Field::Shape => input.shape = Some(map.next_value()?),
                Field::Datatype => input.datatype = Some(map.next_value()?),
                Field::Data => input.data = Some(map.next_value::<&'de RawValue>()?),
                Field::Parameters => input.binary_data = map.next_value_seed(ParametersSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(input)
    }
}

/// An input's `parameters`: all that matters is whether `binary_data_size` is there.
struct ParametersSeed;

impl<'de> DeserializeSeed<'de> for ParametersSeed {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParametersSeed {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'parameters' as an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut binary = false;
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            if matches!(field, Field::BinaryDataSize) {
                binary = true;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(binary)
    }
}

// ---- validation and the numbers -----------------------------------------------------------------

/// The integral range of each integer datatype, for the check that its values fit.
fn integer_range(datatype: &str) -> Option<(f64, f64)> {
    Some(match datatype {
        "INT8" => (i8::MIN as f64, i8::MAX as f64),
        "INT16" => (i16::MIN as f64, i16::MAX as f64),
        "INT32" => (i32::MIN as f64, i32::MAX as f64),
        "INT64" => (i64::MIN as f64, i64::MAX as f64),
        "UINT8" => (0.0, u8::MAX as f64),
        "UINT16" => (0.0, u16::MAX as f64),
        "UINT32" => (0.0, u32::MAX as f64),
        "UINT64" => (0.0, u64::MAX as f64),
        _ => return None,
    })
}

const FLOAT_TYPES: [&str; 3] = ["FP16", "FP32", "FP64"];

impl RawInput<'_> {
    fn finish(self, index: usize) -> Result<Tensor, DecodeError> {
        let missing =
            |field: &str| DecodeError(format!("inputs[{index}]: missing field '{field}'"));
        let name = self.name.ok_or_else(|| missing("name"))?;
        let shape = self.shape.ok_or_else(|| missing("shape"))?;
        let datatype = self.datatype.ok_or_else(|| missing("datatype"))?;
        let range = integer_range(&datatype);
        if range.is_none() && !FLOAT_TYPES.contains(&datatype.as_str()) {
            return Err(DecodeError(format!(
                "input '{name}' has datatype {datatype}: only numeric tensors are supported \
                 (FP16, FP32, FP64, INT8..INT64, UINT8..UINT64)"
            )));
        }
        if let Some(&d) = shape.iter().find(|&&d| d < 0) {
            return Err(DecodeError(format!(
                "input '{name}': shape {shape:?} has a negative dimension {d}"
            )));
        }
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let Some(raw) = self.data else {
            if self.binary_data {
                return Ok(Tensor {
                    name,
                    datatype,
                    shape,
                    data: None,
                });
            }
            return Err(missing("data"));
        };
        let values = parse_numbers(raw.get()).map_err(|(position, found)| {
            DecodeError(format!(
                "input '{name}': element {position} is {found}, not a number"
            ))
        })?;
        if expected != Some(values.len() as u64) {
            return Err(DecodeError(format!(
                "input '{name}': shape {shape:?} holds {} values but data has {}",
                expected.map_or_else(|| "too many".to_string(), |e| e.to_string()),
                values.len()
            )));
        }
        if let Some((lo, hi)) = range {
            if let Some((position, v)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| v.fract() != 0.0 || **v < lo || **v > hi)
            {
                return Err(DecodeError(format!(
                    "input '{name}': element {position} is {v}, not a {datatype} value (integral, {lo}..={hi})"
                )));
            }
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data: Some(values.into_iter().map(|v| v as f32).collect()),
        })
    }
}

/// Flatten valid JSON text (a number or nested arrays of numbers) into its numbers, in order.
/// Err gives the flat position of the first element that is not a number and what it is.
fn parse_numbers(text: &str) -> Result<Vec<f64>, (usize, &'static str)> {
    let bytes = text.as_bytes();
    // ~10 bytes per number in typical payloads: one allocation for the common case.
    let mut values = Vec::with_capacity(bytes.len() / 8 + 1);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b']' | b',' | b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                // serde_json already checked the JSON grammar, so this cannot fail; stay safe anyway.
                let v: f64 = fast_float2::parse(&bytes[start..i])
                    .map_err(|_| (values.len(), "a malformed number"))?;
                values.push(v);
            }
            b'"' => return Err((values.len(), "a string")),
            b't' | b'f' => return Err((values.len(), "a boolean")),
            b'n' => return Err((values.len(), "null")),
            _ => return Err((values.len(), "an object")),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        decode(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn decodes_flat_and_nested_data_and_ignores_unknown_fields() {
        let body = br#"{"id": "r1", "parameters": {"x": [1]}, "outputs": [{"name": "y"}],
            "inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [-3e2, 0]],
                        "parameters": {"content_type": "x"}},
                       {"name": "b", "shape": [1], "datatype": "UINT8", "data": [255]},
                       {"name": "c", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(
            r.inputs[0].data.as_deref(),
            Some(&[1.0f32, 2.5, -300.0, 0.0][..])
        );
        assert_eq!(r.inputs[0].shape, vec![2, 2]);
        assert_eq!(r.inputs[1].data.as_deref(), Some(&[255.0f32][..]));
        assert_eq!(r.inputs[2].data, None);
    }

    #[test]
    fn every_bad_request_names_what_is_wrong() {
        assert!(err("{").contains("line 1"));
        assert!(err(r#"{"id": "x"}"#).contains("'inputs'"));
        assert!(
            err(r#"{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}"#)
                .contains("'name'")
        );
        assert!(
            err(r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}"#)
                .contains("'data'")
        );
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}"#
        )
        .contains("only numeric"));
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}"#
        )
        .contains("[3] holds 3 values but data has 2"));
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}"#
        )
        .contains("negative"));
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, null]}]}"#
        )
        .contains("element 1 is null"));
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [128]}]}"#
        )
        .contains("element 0 is 128"));
        assert!(err(
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}]}"#
        )
        .contains("INT32"));
    }
}
