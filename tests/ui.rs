//! Compile-time guarantees, checked with trybuild: every program in
//! `ui-tests/fail/` must be refused by the compiler with the error stored
//! beside it (one misuse per file, named after it), and every program in
//! `ui-tests/pass/` must compile and run.
//!
//! The `.stderr` files match the toolchain pinned in `rust-toolchain.toml`;
//! after changing a message or the toolchain, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` and read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui-tests/fail/*.rs");
    t.pass("ui-tests/pass/*.rs");
}
