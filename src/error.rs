//! Errors caused by what the user gave us (paths, files, flags) are `UserError`s: the CLI prints
//! them as one line and exits with code 2. Anything else is a bug and exits with 1.

use std::fmt;

#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Build an `anyhow::Error` that the CLI reports as bad input (exit code 2).
pub fn user_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// `bail!` for bad input.
#[macro_export]
macro_rules! user_bail {
    ($($arg:tt)*) => { return Err($crate::error::user_error(format!($($arg)*))) };
}

/// True when the error (or anything it wraps) comes from bad input.
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<UserError>().is_some())
}

/// Attach a user-facing context to errors that come from reading user files.
pub trait UserContext<T> {
    fn user_context<F: FnOnce() -> String>(self, f: F) -> anyhow::Result<T>;
}

impl<T, E: fmt::Display> UserContext<T> for Result<T, E> {
    fn user_context<F: FnOnce() -> String>(self, f: F) -> anyhow::Result<T> {
        self.map_err(|e| user_error(format!("{}: {e}", f())))
    }
}
