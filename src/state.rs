//! The type states of a [`Tx`](crate::Tx): [`Open`] and [`Done`].

/// The state of a [`Tx`](crate::Tx) (type state).
///
/// This trait is sealed: only [`Open`] and [`Done`] implement it, so a
/// transaction can be in no state the crate does not know how to finish.
///
/// ```compile_fail
/// struct Halfway;
/// impl pgtx::State for Halfway {}
/// ```
pub trait State: sealed::Sealed {}

/// A transaction that has begun and is neither committed nor rolled back yet
/// (type state).
///
/// Statements run only on `Tx<'_, Open>`. The only ways out are
/// [`Tx::commit`](crate::Tx::commit) and [`Tx::rollback`](crate::Tx::rollback).
/// The marker cannot be built outside this crate:
///
/// ```compile_fail
/// let _ = pgtx::Open(());
/// ```
#[derive(Debug)]
pub struct Open(pub(crate) ());

/// A transaction that has been committed or rolled back (type state).
///
/// `T` is the value the transaction hands back from
/// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction);
/// it is `()`, and `Done` zero-sized, unless [`Tx::returning`](crate::Tx::returning)
/// set one. It cannot be built outside this crate:
///
/// ```compile_fail
/// let _: pgtx::Done = pgtx::Done(());
/// ```
#[derive(Debug)]
pub struct Done<T = ()>(pub(crate) T);

impl State for Open {}
impl<T> State for Done<T> {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Open {}
    impl<T> Sealed for super::Done<T> {}
}

static_assertions::assert_eq_size!(Open, ());
static_assertions::assert_eq_size!(Done, ());
