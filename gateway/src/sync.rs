//! Locks that outlive a panic.
//!
//! A panic while a `std::sync::Mutex` is held poisons it, and every later `lock().expect()`
//! would panic too: one bad input in one connection would spread to every connection that
//! touches the same hub shard or queue. The data behind Herald's locks stays consistent
//! between statements (no lock is held across a step that can leave it half-changed), so
//! the poison flag is ignored.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poison.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The message of a caught panic, for the log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
