//! The side channel between a custom op's forward and its public function.
//!
//! candle's custom-op forward returns one storage and a `candle_core::Error`; the ops also
//! produce outputs that are not part of the differentiable result (branch counts, the GRPO
//! per-token terms, the backward's saved scalars) and fail with the crate's typed errors (a
//! NaN row, a target out of range). Both go through a [`Side`] shared (by `Arc`) between the op
//! and the public function, which then builds the extra tensors and returns the typed error
//! instead of candle's string.

use std::sync::{Mutex, MutexGuard};

use crate::error::Error;

/// What a forward left for its public function: extra outputs `T` and the typed error, if any.
#[derive(Debug)]
pub(crate) struct Side<T> {
    out: Mutex<Option<T>>,
    error: Mutex<Option<Error>>,
}

impl<T> Default for Side<T> {
    fn default() -> Self {
        Self { out: Mutex::new(None), error: Mutex::new(None) }
    }
}

/// A lock that never panics: a poisoned mutex only means another thread panicked while holding
/// it, and the value (an `Option`) is still well-formed.
fn lock<U>(m: &Mutex<U>) -> MutexGuard<'_, U> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Side<T> {
    /// Records `e` for the public function and returns candle's error for the forward.
    pub fn fail(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        *lock(&self.error) = Some(e);
        candle_core::Error::Msg(msg)
    }

    /// Stores the forward's extra outputs.
    pub fn put(&self, value: T) {
        *lock(&self.out) = Some(value);
    }

    /// Takes the extra outputs (once).
    pub fn take(&self) -> Option<T> {
        lock(&self.out).take()
    }

    /// Runs `f` on the stored outputs, leaving them in place (a backward may read them more than
    /// once; the public function moves out what only it needs).
    pub fn with<R>(&self, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        f(lock(&self.out).as_mut())
    }

    /// The forward's result, with the typed error it recorded in place of candle's string.
    pub fn result<R>(&self, r: candle_core::Result<R>) -> crate::error::Result<R> {
        r.map_err(|e| lock(&self.error).take().unwrap_or_else(|| e.into()))
    }
}
