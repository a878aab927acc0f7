//! Fused dense layers and whole-MLP inference: `y = act(x @ w + b)` with no intermediate array.

use crate::element::Float;
use crate::matmul;
use crate::small_batch::DenseProblem;

/// `out = act(x @ w + bias)`: `x` is (m, k), `w` is (k, n), `bias` is (n,), `out` is (m, n).
pub fn dense<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    out: &mut [T],
    [m, k, n]: [usize; 3],
    relu_after: bool,
) {
    assert_eq!(bias.len(), n, "bias length");
    let p = DenseProblem {
        x,
        w,
        bias: Some(bias),
        m,
        k,
        n,
        relu: relu_after,
    };
    matmul::dense_into(&p, out);
}

/// One layer of an MLP: `w` is (inputs, outputs) row-major, `b` is (outputs,).
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a, T> {
    pub w: &'a [T],
    pub b: &'a [T],
    pub inputs: usize,
    pub outputs: usize,
}

/// The forward pass of a stack of dense layers, ReLU between them and none after the last:
/// `x` is (m, layers[0].inputs), `out` is (m, layers.last().outputs). Shapes must chain.
pub fn mlp_forward<T: Float>(x: &[T], m: usize, layers: &[Layer<'_, T>], out: &mut [T]) {
    assert!(!layers.is_empty(), "at least one layer");
    let mut current: Vec<T> = Vec::new();
    let mut next: Vec<T> = Vec::new();
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        let input: &[T] = if i == 0 {
            x
        } else {
            &current[..m * layer.inputs]
        };
        if i == last {
            dense(
                input,
                layer.w,
                layer.b,
                out,
                [m, layer.inputs, layer.outputs],
                false,
            );
        } else {
            next.resize(m * layer.outputs, T::ZERO);
            dense(
                input,
                layer.w,
                layer.b,
                &mut next[..m * layer.outputs],
                [m, layer.inputs, layer.outputs],
                true,
            );
            core::mem::swap(&mut current, &mut next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_adds_bias_and_applies_relu_on_both_paths() {
        for m in [1, 3, 40] {
            let (k, n) = (3, 2);
            let x: Vec<f64> = (0..m * k).map(|i| i as f64 - 4.0).collect();
            let w = [1.0, -1.0, 2.0, 0.5, -1.0, 1.0];
            let b = [0.5, -0.5];
            let mut out = vec![0.0; m * n];
            dense(&x, &w, &b, &mut out, [m, k, n], true);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|kk| x[i * k + kk] * w[kk * n + j]).sum::<f64>() + b[j];
                    assert_eq!(out[i * n + j], s.max(0.0), "m={m} row {i} col {j}");
                }
            }
        }
    }

    #[test]
    fn mlp_forward_equals_layer_by_layer_dense() {
        for m in [1, 2, 17, 64] {
            let (d0, d1, d2) = (11, 7, 3);
            let x: Vec<f32> = (0..m * d0).map(|i| ((i % 9) as f32) - 4.0).collect();
            let w1: Vec<f32> = (0..d0 * d1).map(|i| ((i % 5) as f32) - 2.0).collect();
            let b1: Vec<f32> = (0..d1).map(|i| i as f32 - 3.0).collect();
            let w2: Vec<f32> = (0..d1 * d2).map(|i| ((i % 3) as f32) - 1.0).collect();
            let b2 = vec![1.0f32; d2];
            let layers = [
                Layer {
                    w: &w1[..],
                    b: &b1[..],
                    inputs: d0,
                    outputs: d1,
                },
                Layer {
                    w: &w2[..],
                    b: &b2[..],
                    inputs: d1,
                    outputs: d2,
                },
            ];
            let mut out = vec![0f32; m * d2];
            mlp_forward(&x, m, &layers, &mut out);
            let mut h = vec![0f32; m * d1];
            dense(&x, &w1, &b1, &mut h, [m, d0, d1], true);
            let mut want = vec![0f32; m * d2];
            dense(&h, &w2, &b2, &mut want, [m, d1, d2], false);
            assert_eq!(out, want);
            assert!(
                want.iter().any(|&v| v < 0.0),
                "no ReLU after the last layer"
            );
        }
    }
}
