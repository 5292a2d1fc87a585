//! The one place connections are made: for a manager's session (so for
//! pools and two-phase commit, whose connections are managers'), for the
//! background reconnection, and for the listener. Settings → connect (each
//! host in turn, as `connect/` orders them) → the `on_connect` hook →
//! after an outage, the recovery handlers.

use crate::blocking::driver::{Blocking, Driver};
use crate::blocking::hooks::{NewConnection, OnConnect, OnReconnect, run_on_connect};
use crate::config::Settings;
use crate::conn::NoticeHandler;
use crate::conn::writable::WritableWatch;
use crate::error::Result;
use crate::statements::Naming;
use crate::user_code::catch_panic;

/// How new connections are made: the settings, how SQL text runs on them,
/// and the hooks, as the [`Builder`](crate::Builder) was given them.
pub(crate) struct ConnectionFactory {
    settings: Settings,
    naming: Naming,
    on_connect: Option<OnConnect>,
    on_reconnect: Vec<OnReconnect>,
    on_notice: Option<NoticeHandler>,
    /// Shared with the connections of the same builder.
    watch: WritableWatch,
}

/// Why a connection is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Occasion {
    /// The first, or one opened after another was closed on purpose.
    Fresh,
    /// The last one was lost: this one ends an outage, and the recovery
    /// handlers run on it.
    EndsOutage,
}

impl ConnectionFactory {
    /// A factory with no hooks.
    pub(crate) fn new(settings: Settings, naming: Naming) -> ConnectionFactory {
        ConnectionFactory {
            settings,
            naming,
            on_connect: None,
            on_reconnect: Vec::new(),
            on_notice: None,
            watch: WritableWatch::default(),
        }
    }

    /// Shares what its connections learn of a server refusing writes with
    /// the connections of `watch` (a pool's other members).
    pub(crate) fn with_watch(mut self, watch: WritableWatch) -> ConnectionFactory {
        self.watch = watch;
        self
    }

    /// Runs `hook` on every new connection before anyone gets it.
    pub(crate) fn with_on_connect(mut self, hook: Option<OnConnect>) -> ConnectionFactory {
        self.on_connect = hook;
        self
    }

    /// Runs `handlers` on every connection that ends an outage.
    pub(crate) fn with_on_reconnect(mut self, handlers: Vec<OnReconnect>) -> ConnectionFactory {
        self.on_reconnect = handlers;
        self
    }

    /// Tells `handler` every notice the server sends on the connections.
    pub(crate) fn with_on_notice(mut self, handler: Option<NoticeHandler>) -> ConnectionFactory {
        self.on_notice = handler;
        self
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How SQL text runs on the connections made here.
    pub(crate) fn naming(&self) -> Naming {
        self.naming
    }

    /// A new connection, driven on `runtime`, set up by the `on_connect` hook if there is one
    /// (closed again if the hook fails), and by the recovery handlers when
    /// it ends an outage (whose failures are logged, not returned).
    ///
    /// # Errors
    ///
    /// As `Driver::open`, and [`Error::OnConnect`](crate::Error::OnConnect)
    /// if the hook failed or left a transaction block open.
    ///
    /// # Panics
    ///
    /// When the `on_connect` hook panics (the caller decides whether to
    /// catch it); recovery handlers' panics are caught and logged.
    pub(crate) fn open(&self, runtime: &Blocking, occasion: Occasion) -> Result<Driver> {
        let mut driver = Driver::open(
            runtime,
            &self.settings,
            self.naming,
            self.on_notice.clone(),
            &self.watch,
        )?;
        if let Some(hook) = &self.on_connect
            && let Err(e) = run_on_connect(hook, &mut driver)
        {
            log::warn!(
                "pgtx: closing a new connection: {}",
                crate::error::chain(&e)
            );
            driver.close();
            return Err(e);
        }
        if occasion == Occasion::EndsOutage {
            self.run_recovery_handlers(&mut driver);
        }
        Ok(driver)
    }

    /// Runs every recovery handler on the connection that ended an
    /// outage; a failure or a panic is logged and the others still run.
    fn run_recovery_handlers(&self, driver: &mut Driver) {
        for (i, handler) in self.on_reconnect.iter().enumerate() {
            let outcome = catch_panic(
                || format!("recovery handler #{i} panicked"),
                || handler.call(&mut NewConnection::new(driver)),
            );
            if let Some(Err(e)) = outcome {
                log::error!("pgtx: recovery handler #{i} failed: {e}");
            }
        }
    }
}
