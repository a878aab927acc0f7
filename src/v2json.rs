//! Decoding of KServe v2 (Open Inference Protocol) JSON inference requests, for the HTTP hot path.
//!
//! One hand-written pass over the body: the structure (`id`, `inputs`, each input's `name`, `shape`,
//! `datatype`, `data`, `parameters.binary_data_size`) is read as it goes, unknown fields are skipped with the
//! JSON grammar still checked, and each input's `data` (flat or nested arrays) is parsed straight into a
//! `Vec<f32>`. A general JSON parser walked the 784-number body twice (once to check it, once to convert it)
//! and cost ~50 us; this costs ~10 us. Numbers are rounded as `np.asarray(json.loads(...), np.float32)`
//! rounds them (decimal -> nearest f64 -> nearest f32): a fast path computes the f64 from up to 19 significant
//! digits and is taken only when the result cannot land differently; everything else goes to fast-float2.

use core::fmt;

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

/// Nesting deeper than this is refused (a recursive walk must not overflow the stack on hostile input).
const MAX_DEPTH: u32 = 128;

const FLOAT_TYPES: [&str; 3] = ["FP16", "FP32", "FP64"];

/// Decode a v2 inference request body.
pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
    let mut p = Parser { b: body, i: 0 };
    let raw = p.request().map_err(|e| p.describe(e))?;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for (i, input) in raw.inputs.into_iter().enumerate() {
        inputs.push(input.finish(i)?);
    }
    Ok(Request { id: raw.id, inputs })
}

// ---- the scanner ---------------------------------------------------------------------------------

/// A JSON syntax error: what was expected, and where (a byte offset).
struct Syntax {
    what: &'static str,
    at: usize,
}

type Scan<T> = Result<T, Syntax>;

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

struct RawRequest {
    id: Option<String>,
    inputs: Vec<RawInput>,
}

#[derive(Default)]
struct RawInput {
    name: Option<String>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    /// The values, or the first element that is not a number: (flat position, what it is).
    data: Option<Result<Vec<f32>, (usize, &'static str)>>,
    binary_data: bool,
}

impl Parser<'_> {
    fn describe(&self, e: Syntax) -> DecodeError {
        let before = &self.b[..e.at.min(self.b.len())];
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        DecodeError(format!(
            "invalid JSON request body: {} at line {line} column {column}",
            e.what
        ))
    }

    fn fail<T>(&self, what: &'static str) -> Scan<T> {
        Err(Syntax { what, at: self.i })
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Scan<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.fail(what)
        }
    }

    fn request(&mut self) -> Scan<RawRequest> {
        let mut req = RawRequest {
            id: None,
            inputs: Vec::new(),
        };
        let mut saw_inputs = false;
        self.object(0, |p, key| {
            match key {
                "id" => {
                    p.ws();
                    if p.peek() == Some(b'"') {
                        req.id = Some(p.string()?);
                    } else {
                        p.skip_value(1)?; // ids are strings; anything else is ignored, as Triton does
                    }
                }
                "inputs" => {
                    saw_inputs = true;
                    req.inputs = p.inputs()?;
                }
                _ => p.skip_value(1)?,
            }
            Ok(())
        })?;
        self.ws();
        if self.i != self.b.len() {
            return self.fail("trailing characters after the request object");
        }
        if !saw_inputs {
            return Err(Syntax {
                what: "missing field 'inputs'",
                at: self.b.len(),
            });
        }
        Ok(req)
    }

    /// Walk an object, calling `field(parser, key)` with the parser at each value.
    fn object(
        &mut self,
        depth: u32,
        mut field: impl FnMut(&mut Self, &str) -> Scan<()>,
    ) -> Scan<()> {
        if depth > MAX_DEPTH {
            return self.fail("nesting too deep");
        }
        self.expect(
            b'{',
            "expected an object (the request object, an input, or parameters)",
        )?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return self.fail("expected a string key");
            }
            let key = self.string()?;
            self.expect(b':', "expected ':'")?;
            field(self, &key)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    fn inputs(&mut self) -> Scan<Vec<RawInput>> {
        let mut inputs = Vec::new();
        self.expect(b'[', "expected 'inputs' to be an array")?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(inputs);
        }
        loop {
            inputs.push(self.input()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(inputs);
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    fn input(&mut self) -> Scan<RawInput> {
        let mut input = RawInput::default();
        self.ws();
        if self.peek() != Some(b'{') {
            return self.fail("expected each input to be an object");
        }
        self.object(2, |p, key| {
            p.ws();
            match key {
                "name" => {
                    if p.peek() != Some(b'"') {
                        return p.fail("expected 'name' to be a string");
                    }
                    input.name = Some(p.string()?);
                }
                "datatype" => {
                    if p.peek() != Some(b'"') {
                        return p.fail("expected 'datatype' to be a string");
                    }
                    input.datatype = Some(p.string()?);
                }
                "shape" => input.shape = Some(p.shape()?),
                "data" => input.data = Some(p.data()?),
                "parameters" => {
                    if p.peek() == Some(b'{') {
                        p.object(3, |p, key| {
                            if key == "binary_data_size" {
                                input.binary_data = true;
                            }
                            p.skip_value(4)
                        })?;
                    } else {
                        p.skip_value(3)?;
                    }
                }
                _ => p.skip_value(3)?,
            }
            Ok(())
        })?;
        Ok(input)
    }

    fn shape(&mut self) -> Scan<Vec<i64>> {
        let mut dims = Vec::with_capacity(4);
        self.expect(b'[', "expected 'shape' to be an array of integers")?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(dims);
        }
        loop {
            self.ws();
            let start = self.i;
            self.number_span()?;
            let text = core::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
            match text.parse::<i64>() {
                Ok(d) => dims.push(d),
                Err(_) => {
                    self.i = start;
                    return self.fail("expected 'shape' to hold integers");
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(dims);
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    /// An input's `data`: a number or (nested) arrays of numbers, flattened row-major. A non-number
    /// element is reported with its flat position (the rest of the value is still checked as JSON).
    fn data(&mut self) -> Scan<Result<Vec<f32>, (usize, &'static str)>> {
        self.ws();
        let start = self.i;
        let mut out = Vec::with_capacity(self.b.len().saturating_sub(self.i) / 10 + 1);
        match self.values(&mut out, 3) {
            Ok(None) => Ok(Ok(out)),
            Ok(Some(kind)) => {
                let position = out.len();
                self.i = start;
                self.skip_value(3)?;
                Ok(Err((position, kind)))
            }
            Err(e) => Err(e),
        }
    }

    /// Push the numbers of one value; `Some(kind)` names the first element that is not a number.
    fn values(&mut self, out: &mut Vec<f32>, depth: u32) -> Scan<Option<&'static str>> {
        match self.peek() {
            Some(b'[') => {
                if depth > MAX_DEPTH {
                    return self.fail("nesting too deep");
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(None);
                }
                loop {
                    self.ws();
                    // Numbers inline (the hot path); nested arrays and non-numbers recurse.
                    if let Some(b'-' | b'0'..=b'9') = self.peek() {
                        out.push(self.number_f32()?);
                    } else if let Some(kind) = self.values(out, depth + 1)? {
                        return Ok(Some(kind));
                    }
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(None);
                        }
                        _ => return self.fail("expected ',' or ']'"),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                out.push(self.number_f32()?);
                Ok(None)
            }
            Some(b'"') => Ok(Some("a string")),
            Some(b't' | b'f') => Ok(Some("a boolean")),
            Some(b'n') => Ok(Some("null")),
            Some(b'{') => Ok(Some("an object")),
            _ => self.fail("expected a value"),
        }
    }

    /// Parse one number (JSON grammar, strictly) to the f32 numpy would give.
    #[inline(always)]
    fn number_f32(&mut self) -> Scan<f32> {
        let b = self.b;
        let n = b.len();
        let start = self.i;
        let mut i = start;
        let neg = b[i] == b'-';
        if neg {
            i += 1;
        }
        let mut mant: u64 = 0;
        let mut sig = 0u32; // digits in mant (an upper bound: mant < 10^sig)
        let mut exp10: i32 = 0;
        let mut exact = true;
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if matches!(b.get(i), Some(b'0'..=b'9')) {
                    self.i = i;
                    return self.fail("invalid number (leading zero)");
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&c @ b'0'..=b'9') = b.get(i) {
                    if sig < 19 {
                        mant = mant * 10 + u64::from(c - b'0');
                        sig += 1;
                    } else {
                        exp10 += 1;
                        exact = false;
                    }
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return self.fail("invalid number");
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            if mant == 0 {
                while b.get(i) == Some(&b'0') {
                    exp10 -= 1;
                    i += 1;
                }
            }
            while sig + 8 <= 19 && i + 8 <= n {
                let Ok(bytes) = <[u8; 8]>::try_from(&b[i..i + 8]) else {
                    break;
                };
                let chunk = u64::from_le_bytes(bytes);
                match eight_digits(chunk) {
                    Some(v) => {
                        mant = mant * 100_000_000 + v;
                        sig += 8;
                        exp10 -= 8;
                        i += 8;
                    }
                    None => break,
                }
            }
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                if sig < 19 {
                    mant = mant * 10 + u64::from(c - b'0');
                    sig += 1;
                    exp10 -= 1;
                } else {
                    exact = false;
                }
                i += 1;
            }
            if i == frac_start {
                self.i = i;
                return self.fail("invalid number (no digits after '.')");
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let mut negative_exp = false;
            if let Some(&s @ (b'+' | b'-')) = b.get(i) {
                negative_exp = s == b'-';
                i += 1;
            }
            let exp_start = i;
            let mut e: i32 = 0;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                e = (e * 10 + i32::from(c - b'0')).min(100_000);
                i += 1;
            }
            if i == exp_start {
                self.i = i;
                return self.fail("invalid number (no digits in the exponent)");
            }
            exp10 += if negative_exp { -e } else { e };
        }
        self.i = i;
        let fast = if mant == 0 {
            Some(0.0)
        } else if exact && (-22..=22).contains(&exp10) {
            fast_f64(mant, exp10)
        } else {
            None
        };
        let v = match fast {
            Some(v) => (if neg { -v } else { v }) as f32,
            None => {
                let v: f64 = fast_float2::parse(&b[start..i]).map_err(|_| Syntax {
                    what: "invalid number",
                    at: start,
                })?;
                v as f32
            }
        };
        Ok(v)
    }

    /// Check a number's grammar and move past it (for shapes and skipped values).
    fn number_span(&mut self) -> Scan<()> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number_f32().map(|_| ()),
            _ => self.fail("expected a number"),
        }
    }

    fn string(&mut self) -> Scan<String> {
        let start = self.i;
        let (end, escaped) = self.string_span()?;
        let raw = &self.b[start..end];
        if !escaped {
            return match core::str::from_utf8(&raw[1..raw.len() - 1]) {
                Ok(s) => Ok(s.to_owned()),
                Err(_) => Err(Syntax {
                    what: "invalid UTF-8 in a string",
                    at: start,
                }),
            };
        }
        // Escapes are rare in names and ids: let serde_json do the unescaping (\uXXXX, surrogate pairs).
        serde_json::from_slice::<String>(raw).map_err(|_| Syntax {
            what: "invalid string escape",
            at: start,
        })
    }

    /// Move past a string (the parser is at its opening quote); returns (end offset, has escapes).
    fn string_span(&mut self) -> Scan<(usize, bool)> {
        let b = self.b;
        let mut i = self.i + 1;
        let mut escaped = false;
        loop {
            match b.get(i) {
                None => {
                    self.i = i;
                    return self.fail("unterminated string");
                }
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok((i + 1, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u')
                            if b.len() >= i + 6
                                && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
                        {
                            i += 6
                        }
                        _ => {
                            self.i = i;
                            return self.fail("invalid string escape");
                        }
                    }
                }
                Some(&c) if c < 0x20 => {
                    self.i = i;
                    return self.fail("control character in a string");
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Move past any JSON value, checking its grammar.
    fn skip_value(&mut self, depth: u32) -> Scan<()> {
        self.ws();
        match self.peek() {
            Some(b'{') => self.object(depth + 1, |p, _| p.skip_value(depth + 1)),
            Some(b'[') => {
                if depth > MAX_DEPTH {
                    return self.fail("nesting too deep");
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return self.fail("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => {
                let start = self.i;
                let (end, _) = self.string_span()?;
                if core::str::from_utf8(&self.b[start..end]).is_err() {
                    self.i = start;
                    return self.fail("invalid UTF-8 in a string");
                }
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => self.number_span(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.fail("expected a value"),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Scan<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.fail("invalid literal")
        }
    }
}

/// Eight ASCII digits (a little-endian load) to their value, or None if any byte is not a digit.
#[inline(always)]
fn eight_digits(chunk: u64) -> Option<u64> {
    let sub = chunk.wrapping_sub(0x3030_3030_3030_3030);
    let add = chunk.wrapping_add(0x4646_4646_4646_4646);
    if (sub | add) & 0x8080_8080_8080_8080 != 0 {
        return None;
    }
    let mut v = sub;
    v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    v = (v.wrapping_mul(10000) + (v >> 32)) & 0xFFFF_FFFF;
    Some(v)
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// mant * 10^exp10 as an f64 within ~1 ulp, or None when that f64 could round to a different f32 than
/// the correctly rounded one would (near an f32 midpoint), or when the value leaves f32's normal range.
#[inline(always)]
fn fast_f64(mant: u64, exp10: i32) -> Option<f64> {
    let m = mant as f64;
    let v = if exp10 >= 0 {
        m * POW10[exp10 as usize]
    } else {
        m / POW10[(-exp10) as usize]
    };
    // f32 keeps the top 23 of f64's 52 mantissa bits; the f32 rounding boundary is where the low 29 bits
    // are 2^28. Two roundings put v within 2 ulps of the exact value: stay clear of the boundary by 4.
    let low = (v.to_bits() & ((1u64 << 29) - 1)) as i64;
    if (low - (1i64 << 28)).abs() <= 4 || !(1.2e-38..=3.4e38).contains(&v) {
        return None;
    }
    Some(v)
}

// ---- checks on a whole input -----------------------------------------------------------------------

/// The (min, max) of an integer datatype, or None for a float datatype or an unknown one.
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

impl RawInput {
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
        let Some(data) = self.data else {
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
        let values = data.map_err(|(position, found)| {
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
                .map(|&v| f64::from(v))
                .enumerate()
                .find(|(_, v)| v.fract() != 0.0 || *v < lo || *v > hi)
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
            data: Some(values),
        })
    }
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

    #[test]
    fn numbers_round_exactly_as_f64_then_f32() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for k in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if !f.is_finite() || !f32::from_bits(x as u32).is_finite() {
                continue; // JSON has no NaN or infinity literals
            }
            let text = match k % 4 {
                0 => format!("{}", f32::from_bits(x as u32)),
                1 => format!("{f:e}"),
                2 => format!("{}", (x % 2_000_001) as i64 - 1_000_000),
                _ => format!("{}", f32::from_bits(x as u32) as f64),
            };
            let body = format!(
                r#"{{"inputs":[{{"name":"a","shape":[1],"datatype":"FP32","data":[{text}]}}]}}"#
            );
            let got = decode(body.as_bytes()).unwrap().inputs[0]
                .data
                .clone()
                .unwrap()[0];
            let want = text.parse::<f64>().unwrap() as f32;
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{text}: {got} != {want}"
            );
        }
    }

    #[test]
    fn json_grammar_is_enforced_with_line_and_column() {
        for bad in [
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [01]}]}"#,
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.]}]}"#,
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1e]}]}"#,
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [+1]}]}"#,
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1,]}]}"#,
            r#"{"inputs": [], "x": tru}"#,
            r#"{"inputs": [], "x": "bad \q escape"}"#,
            r#"{"inputs": []} trailing"#,
            "{\"inputs\": [], \"x\": \"line\nbreak\"}",
        ] {
            let e = err(bad);
            assert!(
                e.contains("invalid JSON request body") && e.contains("column"),
                "{bad}: {e}"
            );
        }
        assert!(err("{\n  \"inputs\": [,]}").contains("line 2 column 14"));
    }

    #[test]
    fn hostile_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!(
            r#"{{"inputs": [], "x": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(err(&deep).contains("nesting too deep"));
        let deep_data = format!(
            r#"{{"inputs": [{{"name": "a", "shape": [1], "datatype": "FP32", "data": {}1{}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(err(&deep_data).contains("nesting too deep"));
    }

    #[test]
    fn escaped_names_and_ids_are_unescaped() {
        let r = decode(
            br#"{"id": "a\"b\u00e9", "inputs": [{"name": "x\ty", "shape": [0], "datatype": "FP32", "data": []}]}"#,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("a\"b\u{e9}"));
        assert_eq!(r.inputs[0].name, "x\ty");
        assert_eq!(r.inputs[0].data.as_deref(), Some(&[][..]));
    }
}
