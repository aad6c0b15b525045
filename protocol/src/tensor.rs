//! Parameter layout: a manifest of named tensors over one flat little-endian f32 buffer.

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// Upper bound on the number of parameters in one model (2^34 f32s = 64 GiB).
pub const MAX_PARAMS: usize = 1 << 34;

/// One named tensor in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Path of the tensor in the model, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A tensor named `name` with `shape`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
        }
    }

    /// Number of elements (saturating, so absurd shapes fail validation instead of wrapping).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
    }
}

/// The layout of a model's parameters: tensors in the order they appear in the flat buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Manifest {
    /// Tensors in buffer order.
    pub tensors: Vec<TensorSpec>,
}

/// SHA-256 of a manifest's canonical encoding: identifies an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ManifestHash(pub [u8; 32]);

impl std::fmt::Display for ManifestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Total number of f32 elements.
    pub fn numel(&self) -> usize {
        self.tensors.iter().fold(0usize, |acc, t| acc.saturating_add(t.numel()))
    }

    /// Size of the flat buffer in bytes.
    pub fn byte_len(&self) -> usize {
        self.numel().saturating_mul(4)
    }

    /// Checks names are unique and non-empty, shapes non-degenerate, and the total size
    /// below [`MAX_PARAMS`].
    ///
    /// # Errors
    /// [`ProtocolError::InvalidModel`] naming the offending tensor.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tensors {
            if t.name.is_empty() {
                return Err(ProtocolError::InvalidModel("a tensor has an empty name".into()));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(ProtocolError::InvalidModel(format!(
                    "tensor `{}` appears twice",
                    t.name
                )));
            }
            if t.shape.is_empty() || t.shape.contains(&0) {
                return Err(ProtocolError::InvalidModel(format!(
                    "tensor `{}` has a degenerate shape {:?}",
                    t.name, t.shape
                )));
            }
        }
        if self.numel() > MAX_PARAMS {
            return Err(ProtocolError::InvalidModel(format!(
                "{} parameters exceed the limit of {MAX_PARAMS}",
                self.numel()
            )));
        }
        Ok(())
    }

    /// The manifest's identity: SHA-256 over each tensor's name and shape.
    pub fn hash(&self) -> ManifestHash {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&(self.tensors.len() as u64).to_le_bytes());
        for t in &self.tensors {
            ctx.update(&(t.name.len() as u64).to_le_bytes());
            ctx.update(t.name.as_bytes());
            ctx.update(&(t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                ctx.update(&(d as u64).to_le_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        ManifestHash(out)
    }
}

/// Views a parameter buffer as the little-endian bytes that travel on the wire.
///
/// On little-endian targets this borrows; on big-endian ones it converts.
pub fn f32_to_le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Packs parameters as shareable wire bytes (one copy per round, not per receiver).
pub fn params_to_bytes(params: &[f32]) -> bytes::Bytes {
    bytes::Bytes::from(f32_to_le_bytes(params).into_owned())
}

/// Decodes little-endian bytes into f32s.
///
/// # Errors
/// [`ProtocolError::Malformed`] when the length is not a multiple of 4.
pub fn f32_from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, ProtocolError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ProtocolError::Malformed(format!(
            "a parameter buffer of {} bytes is not a whole number of f32s",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Fixes the byte order of a buffer that was filled directly with wire bytes
/// (a no-op on little-endian targets).
pub fn le_in_place(values: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for v in values {
            *v = f32::from_bits(u32::from_le(v.to_bits()));
        }
    }
}

/// Checks every value is finite.
///
/// # Errors
/// [`ProtocolError::NonFinite`] with the index of the first NaN or infinity.
pub fn check_finite(values: &[f32]) -> Result<(), ProtocolError> {
    // Branch-free per chunk so the inner loop vectorises; locate the culprit only on failure.
    let all_finite = values
        .chunks(4096)
        .all(|chunk| chunk.iter().fold(true, |ok, v| ok & v.is_finite()));
    if all_finite {
        return Ok(());
    }
    let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(ProtocolError::NonFinite { index })
}

/// The last path component of a LoRA adapter tensor's `A` factor.
pub const LORA_A: &str = "lora.a";
/// The last path component of a LoRA adapter tensor's `B` factor.
pub const LORA_B: &str = "lora.b";

/// Whether `tensor` names a LoRA factor (`….lora.a` or `….lora.b`).
#[must_use]
pub fn is_lora_factor(tensor: &str) -> bool {
    [LORA_A, LORA_B]
        .iter()
        .any(|f| tensor.strip_suffix(f).is_some_and(|rest| rest.ends_with('.')))
}
