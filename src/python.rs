//! The one binding module: every `#[pyfunction]` of `otpserve._kernel`.
//!
//! Each function checks its arguments first (types, dtypes, shapes, `out=`), turning bad input into a
//! `TypeError`/`ValueError` that names the values, then borrows the numpy buffers in place and releases
//! the GIL for the whole computation (the "dirty scheduler" of a Rustler NIF). C-contiguous, aligned
//! arrays of the right dtype are read where they lie; any other layout is copied once to C order first.
//!
//! Concurrent use. The buffers are not registered with rust-numpy's borrow checker (`try_readonly` /
//! `try_readwrite`): that registry is a hash map behind a lock, and taking and releasing an entry per
//! array was a third of the fixed cost of a small-batch `mlp_forward` (five arrays and the output,
//! ~0.1 us each, measured). It also guarded only against other Rust code borrowing through
//! rust-numpy, never against Python threads, whose numpy ufuncs write arrays without the GIL too. So
//! the contract is numpy's own: an array that a call uses must not be written by another thread while
//! the call runs. Within one call no slice aliases another mutably: `out=` is checked to share no
//! memory with any input. Every index the kernels use comes from the shapes checked here under the
//! GIL, never from element values, and each array object is held (so alive, and numpy refuses to
//! resize a referenced array) until the call returns.

use numpy::ndarray::IxDyn;
use numpy::{
    npyffi, Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use std::fmt::{self, Display};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::slice;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PySequence;

use crate::dense::{self as dense_kernel, Layer};
use crate::element::Float;
use crate::{matmul as gemm_kernel, rowwise, threads, v2json};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => f32::NAME,
            Dtype::F64 => f64::NAME,
        }
    }
}

/// `(2, 3)` / `(3,)`, as Python prints a shape.
fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// An array argument, checked: a numpy array of float32 or float64 with `ndim` dimensions.
fn array_arg<'a, 'py>(
    func: &str,
    arg: &dyn Display,
    obj: &'a Bound<'py, PyAny>,
    ndim: usize,
) -> PyResult<(&'a Bound<'py, PyUntypedArray>, Dtype)> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{func}: {arg} must be a numpy.ndarray, got {}",
            type_name(obj)
        ))
    })?;
    let py = obj.py();
    let descr = arr.dtype();
    let dtype = if descr.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Dtype::F32
    } else if descr.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Dtype::F64
    } else {
        return Err(PyTypeError::new_err(format!(
            "{func}: {arg} has dtype {descr}; accepted dtypes: float32, float64"
        )));
    };
    if arr.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{func}: {arg} must be {ndim}-D, got shape {}",
            fmt_shape(arr.shape())
        )));
    }
    Ok((arr, dtype))
}

/// All arrays of one call share one dtype; the error names each argument's.
fn same_dtype(func: &str, args: &[(&dyn Display, Dtype)]) -> PyResult<Dtype> {
    let first = args[0].1;
    if args.iter().all(|(_, d)| *d == first) {
        return Ok(first);
    }
    let listed: Vec<String> = args
        .iter()
        .map(|(a, d)| format!("{a} is {}", d.name()))
        .collect();
    Err(PyTypeError::new_err(format!(
        "{func}: arrays must all be float32 or all float64, but {}",
        listed.join(", ")
    )))
}

/// An input's elements in C order: read where they lie when the array is C-contiguous and aligned,
/// else from a C-order copy that this keeps alive. Not registered with rust-numpy's borrow checker
/// (see "Concurrent use" at the top of this file).
struct Input<'py, T> {
    array: Bound<'py, PyUntypedArray>,
    elem: PhantomData<T>,
}

impl<'py, T: Element> Input<'py, T> {
    /// `arr` must have passed `array_arg` with the dtype `T` stands for.
    fn new(arr: &Bound<'py, PyUntypedArray>) -> PyResult<Self> {
        let array = if arr.is_c_contiguous() && arr.is_aligned() {
            arr.clone()
        } else {
            arr.call_method1("copy", ("C",))?
                .cast_into::<PyUntypedArray>()?
        };
        Ok(Input {
            array,
            elem: PhantomData,
        })
    }

    fn as_slice(&self) -> &[T] {
        let (data, len) = elements::<T>(&self.array);
        // SAFETY: `array` holds `len` elements of T (the dtype `array_arg` checked; a copy keeps it),
        // C-contiguous and aligned (checked, or a fresh copy), and `self` keeps it alive for as long
        // as the slice. Nothing in this call writes it: `out` was checked not to overlap any input.
        unsafe { slice::from_raw_parts(data, len) }
    }
}

/// Where a C-contiguous array's elements lie, and how many there are; the pointer is dangling but
/// aligned when there are none, as a slice needs (numpy's may be anything then).
fn elements<T>(arr: &Bound<'_, PyUntypedArray>) -> (*mut T, usize) {
    let len = arr.len();
    if len == 0 {
        return (NonNull::dangling().as_ptr(), 0);
    }
    // SAFETY: reading a field of a live array object; it is not dereferenced here.
    (unsafe { (*arr.as_array_ptr()).fields.data }.cast(), len)
}

/// The bytes an array's elements can touch, or None when it has no elements.
fn byte_extent(arr: &Bound<'_, PyUntypedArray>) -> Option<(isize, isize)> {
    if arr.is_empty() {
        return None;
    }
    // SAFETY: reading the data pointer of a live array object; it is not dereferenced.
    let base = unsafe { (*arr.as_array_ptr()).fields.data } as isize;
    let (mut lo, mut hi) = (base, base);
    for (&dim, &stride) in arr.shape().iter().zip(arr.strides()) {
        let span = (dim as isize - 1) * stride;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    Some((lo, hi + arr.dtype().itemsize() as isize))
}

fn is_writeable(arr: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: reading a field of a live array object.
    unsafe { (*arr.as_array_ptr()).fields.flags & npyffi::NPY_ARRAY_WRITEABLE != 0 }
}

/// The array results are written to: the caller's `out=` (checked) or a new one. Not registered with
/// rust-numpy's borrow checker either (see "Concurrent use").
struct Output<'py, T> {
    array: Bound<'py, PyUntypedArray>,
    elem: PhantomData<T>,
}

impl<'py, T: Element> Output<'py, T> {
    /// `inputs` are what a given `out` must not overlap; only looked at when there is one.
    fn prepare(
        py: Python<'py>,
        func: &str,
        out: Option<&Bound<'py, PyAny>>,
        shape: &[usize],
        inputs: &[(&dyn Display, &Bound<'py, PyUntypedArray>)],
    ) -> PyResult<Self> {
        let Some(obj) = out else {
            let array = PyArrayDyn::<T>::zeros(py, IxDyn(shape), false);
            return Ok(Output {
                array: array.as_untyped().clone(),
                elem: PhantomData,
            });
        };
        let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{func}: out must be a numpy.ndarray, got {}",
                type_name(obj)
            ))
        })?;
        let want = numpy::dtype::<T>(py);
        if !arr.dtype().is_equiv_to(&want) {
            return Err(PyTypeError::new_err(format!(
                "{func}: out has dtype {}, but the result is {want}",
                arr.dtype()
            )));
        }
        if arr.shape() != shape {
            return Err(PyValueError::new_err(format!(
                "{func}: out has shape {}, but the result has shape {}",
                fmt_shape(arr.shape()),
                fmt_shape(shape)
            )));
        }
        if !arr.is_c_contiguous() || !arr.is_aligned() {
            return Err(PyValueError::new_err(format!(
                "{func}: out must be a C-contiguous, aligned array"
            )));
        }
        if !is_writeable(arr) {
            return Err(PyValueError::new_err(format!("{func}: out is read-only")));
        }
        if let Some((lo, hi)) = byte_extent(arr) {
            for (name, input) in inputs {
                if let Some((ilo, ihi)) = byte_extent(input) {
                    if lo < ihi && ilo < hi {
                        return Err(PyValueError::new_err(format!(
                            "{func}: out shares memory with {name}; pass a separate output array"
                        )));
                    }
                }
            }
        }
        Ok(Output {
            array: arr.clone(),
            elem: PhantomData,
        })
    }

    fn slice(&mut self) -> &mut [T] {
        let (data, len) = elements::<T>(&self.array);
        // SAFETY: `array` holds `len` elements of T (a new array of T, or `out` with T's dtype),
        // C-contiguous, aligned and writeable (checked in `prepare`), kept alive by `self`. It shares
        // no memory with any input of the call (checked), and `&mut self` makes this the only slice.
        unsafe { slice::from_raw_parts_mut(data, len) }
    }

    /// The result: the new array, or the caller's `out` object itself.
    fn into_result(self) -> Bound<'py, PyAny> {
        self.array.into_any()
    }
}

// ---- matmul ---------------------------------------------------------------------------------------

/// `a @ b` for 2-D float32/float64 arrays, into a new array or `out`.
#[pyfunction]
#[pyo3(signature = (a, b, out=None))]
fn matmul<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (a, da) = array_arg("matmul", &"a", a, 2)?;
    let (b, db) = array_arg("matmul", &"b", b, 2)?;
    let dtype = same_dtype("matmul", &[(&"a", da), (&"b", db)])?;
    let (m, k, k2, n) = (a.shape()[0], a.shape()[1], b.shape()[0], b.shape()[1]);
    if k != k2 {
        return Err(PyValueError::new_err(format!(
            "matmul: inner dimensions do not match: a has shape {} and b has shape {}",
            fmt_shape(a.shape()),
            fmt_shape(b.shape())
        )));
    }
    match dtype {
        Dtype::F32 => matmul_typed::<f32>(py, a, b, out, [m, k, n]),
        Dtype::F64 => matmul_typed::<f64>(py, a, b, out, [m, k, n]),
    }
}

fn matmul_typed<'py, T: Float + Element>(
    py: Python<'py>,
    a: &Bound<'py, PyUntypedArray>,
    b: &Bound<'py, PyUntypedArray>,
    out: Option<&Bound<'py, PyAny>>,
    [m, k, n]: [usize; 3],
) -> PyResult<Bound<'py, PyAny>> {
    let mut output = Output::<T>::prepare(py, "matmul", out, &[m, n], &[(&"a", a), (&"b", b)])?;
    let (ia, ib) = (Input::<T>::new(a)?, Input::<T>::new(b)?);
    let (sa, sb, so) = (ia.as_slice(), ib.as_slice(), output.slice());
    py.detach(|| gemm_kernel::matmul(sa, sb, so, m, k, n));
    Ok(output.into_result())
}

// ---- dense and mlp_forward ------------------------------------------------------------------------

fn parse_activation(func: &str, activation: Option<&str>) -> PyResult<bool> {
    match activation {
        None => Ok(false),
        Some("relu") => Ok(true),
        Some(other) => Err(PyValueError::new_err(format!(
            "{func}: activation must be None or 'relu', got {other:?}"
        ))),
    }
}

/// `activation(x @ w + b)` fused: no intermediate array.
#[pyfunction]
#[pyo3(signature = (x, w, b, activation=None, out=None))]
fn dense<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    activation: Option<&str>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let relu = parse_activation("dense", activation)?;
    let (x, dx) = array_arg("dense", &"x", x, 2)?;
    let (w, dw) = array_arg("dense", &"w", w, 2)?;
    let (b, db) = array_arg("dense", &"b", b, 1)?;
    let dtype = same_dtype("dense", &[(&"x", dx), (&"w", dw), (&"b", db)])?;
    let (m, k, k2, n) = (x.shape()[0], x.shape()[1], w.shape()[0], w.shape()[1]);
    if k != k2 {
        return Err(PyValueError::new_err(format!(
            "dense: inner dimensions do not match: x has shape {} and w has shape {}",
            fmt_shape(x.shape()),
            fmt_shape(w.shape())
        )));
    }
    if b.shape()[0] != n {
        return Err(PyValueError::new_err(format!(
            "dense: b has shape {}, expected ({n},) to match w's shape {}",
            fmt_shape(b.shape()),
            fmt_shape(w.shape())
        )));
    }
    let arrays = [x, w, b];
    match dtype {
        Dtype::F32 => dense_typed::<f32>(py, arrays, out, [m, k, n], relu),
        Dtype::F64 => dense_typed::<f64>(py, arrays, out, [m, k, n], relu),
    }
}

fn dense_typed<'py, T: Float + Element>(
    py: Python<'py>,
    [x, w, b]: [&Bound<'py, PyUntypedArray>; 3],
    out: Option<&Bound<'py, PyAny>>,
    [m, k, n]: [usize; 3],
    relu: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mut output = Output::<T>::prepare(
        py,
        "dense",
        out,
        &[m, n],
        &[(&"x", x), (&"w", w), (&"b", b)],
    )?;
    let (ix, iw, ib) = (
        Input::<T>::new(x)?,
        Input::<T>::new(w)?,
        Input::<T>::new(b)?,
    );
    let (sx, sw, sb, so) = (ix.as_slice(), iw.as_slice(), ib.as_slice(), output.slice());
    py.detach(|| dense_kernel::dense(sx, sw, sb, so, [m, k, n], relu));
    Ok(output.into_result())
}

/// The forward pass of a stack of dense layers (ReLU between, none after the last) in one call.
#[pyfunction]
#[pyo3(signature = (x, layers, out=None))]
fn mlp_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layers: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    const F: &str = "mlp_forward";
    let (x, dtype) = array_arg(F, &"x", x, 2)?;
    let items = layers.try_iter().map_err(|_| {
        PyTypeError::new_err(format!("{F}: layers must be a sequence of (w, b) pairs"))
    })?;
    // A loop rather than `collect`: collecting asks the iterator for its length hint, a dictionary
    // lookup of `__length_hint__` that cost as much as checking an array.
    let mut pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = Vec::with_capacity(4);
    for (i, item) in items.enumerate() {
        let not_pair = || PyTypeError::new_err(format!("{F}: layers[{i}] must be a (w, b) pair"));
        let item = item?;
        let seq = item.cast::<PySequence>().map_err(|_| not_pair())?;
        if seq.len()? != 2 {
            return Err(not_pair());
        }
        pairs.push((seq.get_item(0)?, seq.get_item(1)?));
    }
    if pairs.is_empty() {
        return Err(PyValueError::new_err(format!(
            "{F}: layers is empty; at least one (w, b) pair is needed"
        )));
    }
    // Every layer's shapes are checked before any computing starts.
    let mut checked = Vec::with_capacity(pairs.len());
    let mut features = x.shape()[1];
    for (i, (w, b)) in pairs.iter().enumerate() {
        let (w, dw) = array_arg(F, &LayerArg(i, "w"), w, 2)?;
        let (b, db) = array_arg(F, &LayerArg(i, "b"), b, 1)?;
        same_dtype(
            F,
            &[
                (&"x", dtype),
                (&LayerArg(i, "w"), dw),
                (&LayerArg(i, "b"), db),
            ],
        )?;
        if w.shape()[0] != features {
            let source = if i == 0 {
                format!("x has shape {}", fmt_shape(x.shape()))
            } else {
                format!("layer {} outputs {features}", i - 1)
            };
            return Err(PyValueError::new_err(format!(
                "{F}: layer {i}: w has shape {} but its input has {features} features ({source})",
                fmt_shape(w.shape())
            )));
        }
        if b.shape()[0] != w.shape()[1] {
            return Err(PyValueError::new_err(format!(
                "{F}: layer {i}: b has shape {}, expected ({},) to match w's shape {}",
                fmt_shape(b.shape()),
                w.shape()[1],
                fmt_shape(w.shape())
            )));
        }
        features = w.shape()[1];
        checked.push((w, b));
    }
    match dtype {
        Dtype::F32 => mlp_typed::<f32>(py, x, &checked, out, features),
        Dtype::F64 => mlp_typed::<f64>(py, x, &checked, out, features),
    }
}

/// "layer 2 w": an argument's name, formatted only when an error needs it.
struct LayerArg(usize, &'static str);

impl Display for LayerArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {} {}", self.0, self.1)
    }
}

type CheckedLayer<'a, 'py> = (
    &'a Bound<'py, PyUntypedArray>,
    &'a Bound<'py, PyUntypedArray>,
);

fn mlp_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyUntypedArray>,
    layers: &[CheckedLayer<'_, 'py>],
    out: Option<&Bound<'py, PyAny>>,
    outputs: usize,
) -> PyResult<Bound<'py, PyAny>> {
    const F: &str = "mlp_forward";
    let m = x.shape()[0];
    let mut output = if out.is_some() {
        let names: Vec<LayerArg> = (0..layers.len())
            .flat_map(|i| [LayerArg(i, "w"), LayerArg(i, "b")])
            .collect();
        let mut named: Vec<(&dyn Display, &Bound<'py, PyUntypedArray>)> = vec![(&"x", x)];
        for ((w, b), pair) in layers.iter().zip(names.chunks_exact(2)) {
            named.push((&pair[0], w));
            named.push((&pair[1], b));
        }
        Output::<T>::prepare(py, F, out, &[m, outputs], &named)?
    } else {
        Output::<T>::prepare(py, F, None, &[m, outputs], &[])?
    };
    let ix = Input::<T>::new(x)?;
    let weights = layers
        .iter()
        .map(|(w, b)| Ok((Input::<T>::new(w)?, Input::<T>::new(b)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let plan: Vec<Layer<'_, T>> = weights
        .iter()
        .zip(layers)
        .map(|((iw, ib), (w, _))| Layer {
            w: iw.as_slice(),
            b: ib.as_slice(),
            inputs: w.shape()[0],
            outputs: w.shape()[1],
        })
        .collect();
    let (sx, so) = (ix.as_slice(), output.slice());
    py.detach(|| dense_kernel::mlp_forward(sx, m, &plan, so));
    Ok(output.into_result())
}

// ---- softmax and argmax ---------------------------------------------------------------------------

/// Softmax of each row of a 2-D array.
#[pyfunction]
#[pyo3(signature = (x, out=None))]
fn softmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (x, dtype) = array_arg("softmax", &"x", x, 2)?;
    match dtype {
        Dtype::F32 => softmax_typed::<f32>(py, x, out),
        Dtype::F64 => softmax_typed::<f64>(py, x, out),
    }
}

fn softmax_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyUntypedArray>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (m, n) = (x.shape()[0], x.shape()[1]);
    let mut output = Output::<T>::prepare(py, "softmax", out, &[m, n], &[(&"x", x)])?;
    let ix = Input::<T>::new(x)?;
    let (sx, so) = (ix.as_slice(), output.slice());
    py.detach(|| rowwise::softmax(sx, so, m, n));
    Ok(output.into_result())
}

/// The column index of each row's maximum, as int64 (first on ties, first NaN wins, like numpy).
#[pyfunction]
fn argmax<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (x, dtype) = array_arg("argmax", &"x", x, 2)?;
    let (m, n) = (x.shape()[0], x.shape()[1]);
    if n == 0 && m > 0 {
        return Err(PyValueError::new_err(format!(
            "argmax: x has shape {}; an empty row has no argmax",
            fmt_shape(x.shape())
        )));
    }
    let mut result = Output::<i64>::prepare(py, "argmax", None, &[m], &[])?;
    let so = result.slice();
    match dtype {
        Dtype::F32 => {
            let ix = Input::<f32>::new(x)?;
            let sx = ix.as_slice();
            py.detach(|| rowwise::argmax(sx, so, m, n));
        }
        Dtype::F64 => {
            let ix = Input::<f64>::new(x)?;
            let sx = ix.as_slice();
            py.detach(|| rowwise::argmax(sx, so, m, n));
        }
    }
    Ok(result.into_result())
}

// ---- threads --------------------------------------------------------------------------------------

/// Set how many threads large products use (default: the number of available cores).
#[pyfunction]
fn set_num_threads(py: Python<'_>, n: i64) -> PyResult<()> {
    if n < 1 {
        return Err(PyValueError::new_err(format!(
            "set_num_threads: n must be at least 1, got {n}"
        )));
    }
    let n = usize::try_from(n).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| threads::set_num_threads(n))
        .map_err(PyValueError::new_err)
}

/// How many threads large products use.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

// ---- KServe v2 JSON -------------------------------------------------------------------------------

type DecodedInput<'py> = (String, String, Vec<i64>, Option<Bound<'py, PyArray1<f32>>>);

/// Decode a KServe v2 JSON inference request into (id, [(name, datatype, shape, float32 data)]).
#[pyfunction]
fn decode_v2_json<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<(Option<String>, Vec<DecodedInput<'py>>)> {
    let request = py
        .detach(|| v2json::decode(body))
        .map_err(|e| PyValueError::new_err(e.0))?;
    let inputs = request
        .inputs
        .into_iter()
        .map(|t| {
            (
                t.name,
                t.datatype,
                t.shape,
                t.data.map(|d| PyArray1::from_vec(py, d)),
            )
        })
        .collect();
    Ok((request.id, inputs))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(dense, m)?)?;
    m.add_function(wrap_pyfunction!(mlp_forward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(argmax, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(decode_v2_json, m)?)?;
    Ok(())
}
