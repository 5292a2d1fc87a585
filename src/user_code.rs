//! Running code the user gave pgtx (listener observers, recovery handlers,
//! an `on_connect` hook on the reconnection thread) where its panic must
//! not unwind through pgtx: the panic is caught and logged, and the caller
//! carries on.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `code`; after a panic, logs `"pgtx: {what}: {message}"` and
/// returns `None`. `what` says which code panicked and when ("listener
/// observer 2 panicked on a reconnection"), and is only made when it did.
///
/// Unwind safety is asserted: the code sees pgtx's state only through
/// handles whose every method leaves it consistent between calls.
pub(crate) fn catch_panic<T>(what: impl FnOnce() -> String, code: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(code)) {
        Ok(value) => Some(value),
        Err(panic) => {
            log::error!("pgtx: {}: {}", what(), panic_message(&*panic));
            None
        }
    }
}

#[cfg(feature = "aio")]
/// [`catch_panic`] for a future: polls `code` to its end; after a panic in
/// any poll, logs `"pgtx: {what}: {message}"` and returns `None` (the
/// future is dropped).
pub(crate) async fn catch_panic_async<F: std::future::Future>(
    what: impl FnOnce() -> String,
    code: F,
) -> Option<F::Output> {
    use std::task::Poll;
    let mut code = std::pin::pin!(code);
    let mut what = Some(what);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| code.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Some(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => {
                let what = what.take().map_or_else(String::new, |what| what());
                log::error!("pgtx: {what}: {}", panic_message(&*panic));
                Poll::Ready(None)
            }
        },
    )
    .await
}

/// What a panic said, when it said it with a string.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_and_the_value_of_code_that_returns_is_kept() {
        assert_eq!(catch_panic(|| "sum panicked".to_owned(), || 1 + 1), Some(2));
        let caught: Option<()> = catch_panic(|| "observer 1 panicked".to_owned(), || panic!("bug"));
        assert_eq!(caught, None);
    }

    #[test]
    fn the_message_of_a_panic_is_read_whether_static_or_formatted() {
        let fixed = catch_unwind(|| panic!("fixed")).expect_err("panicked");
        assert_eq!(panic_message(&*fixed), "fixed");
        let n = 3;
        let formatted = catch_unwind(|| panic!("formatted {n}")).expect_err("panicked");
        assert_eq!(panic_message(&*formatted), "formatted 3");
        let other = catch_unwind(|| std::panic::panic_any(7_u8)).expect_err("panicked");
        assert_eq!(panic_message(&*other), "(no message)");
    }
}
