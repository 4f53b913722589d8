//! The listeners, bound when the App is built so that it can say where it listens: the Unix
//! socket, loopback TCP and TLS serving the gRPC API, the AWS-protocol door, the metrics and
//! probes listener and the health-only port. Each is an accept loop, within its
//! connection limits, that ends at the stop signal once its calls have drained.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
};

use serde::Serialize;

use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;

use super::{
    routes::{ApiRouter, Served, Shared},
    tasks::{Named, background_task, listener_task},
};
use crate::{
    aws_api::{Door, DoorLimits},
    config::Settings,
    connection::{self, Admission, ListenerKind},
    drain::DrainingHealth,
    probes::Readiness,
    server::{ServeError, bind_tcp, bind_unix, hardened},
    tls::ReloadableTls,
};

/// Where an [`App`](super::App) listens, once bound; also what `serve --ready-file` writes (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub unix_socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
    /// The AWS-protocol door.
    pub aws_api: Option<SocketAddr>,
}

impl Addresses {
    /// Writes the addresses as JSON to `path`, whole or not at all (a temporary file renamed
    /// into place), so a script that waits for the file never reads half of it.
    pub fn write_ready_file(&self, path: &Path) -> Result<(), ServeError> {
        let error = |source| ServeError::ReadyFile {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other);
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text.map_err(error)? + "\n").map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)
    }
}

/// Binds every listener `settings` ask for, in a fixed order (an error names the first
/// that cannot listen); where each listens, and its accept loop.
pub(super) async fn bind(
    settings: &Settings,
    shared: &Shared,
    served: Served,
    tls: Option<&Arc<ReloadableTls>>,
    readiness: &Arc<Readiness>,
) -> Result<(Addresses, Vec<Named>), ServeError> {
    let mut listeners = Listeners {
        settings,
        shared,
        addresses: Addresses::default(),
        tasks: Vec::new(),
    };
    listeners.unix(&served.api).await?;
    listeners.tcp(&served.api).await?;
    if let Some(tls) = tls {
        listeners.tls(&served.api, tls).await?;
    }
    if let Some((door, limits)) = served.door {
        listeners.aws_api(door, limits, tls).await?;
    }
    listeners.metrics(readiness).await?;
    listeners.health(served.health).await?;
    Ok((listeners.addresses, listeners.tasks))
}

/// The listeners bound so far.
struct Listeners<'a> {
    settings: &'a Settings,
    shared: &'a Shared,
    addresses: Addresses,
    tasks: Vec<Named>,
}

impl Listeners<'_> {
    fn admission(&self, kind: ListenerKind) -> Arc<Admission> {
        Admission::new(
            kind,
            &self.settings.config.connections,
            self.shared.metrics.clone(),
        )
    }

    /// Resolves at the stop signal.
    fn stopped(&self) -> impl Future<Output = ()> + Send + use<> {
        crate::drain::stopped(self.shared.stop.clone())
    }

    async fn unix(&mut self, api: &ApiRouter) -> Result<(), ServeError> {
        let listeners = &self.settings.listeners;
        let Some(path) = &listeners.unix_socket else {
            return Ok(());
        };
        let listener = bind_unix(path, listeners.unix_socket_mode).await?;
        self.addresses.unix_socket = Some(path.clone());
        let incoming = connection::incoming(listener, self.admission(ListenerKind::Unix));
        self.tasks.push(listener_task(
            &format!("unix socket `{}`", path.display()),
            api.clone()
                .serve_with_incoming_shutdown(incoming, self.stopped()),
        ));
        Ok(())
    }

    async fn tcp(&mut self, api: &ApiRouter) -> Result<(), ServeError> {
        let Some(addr) = self.settings.listeners.tcp else {
            return Ok(());
        };
        let (listener, local) = bind_tcp("tcp", addr).await?;
        self.addresses.tcp = Some(local);
        let incoming = connection::incoming(listener, self.admission(ListenerKind::Tcp));
        self.tasks.push(listener_task(
            &format!("tcp {local}"),
            api.clone()
                .serve_with_incoming_shutdown(incoming, self.stopped()),
        ));
        Ok(())
    }

    async fn tls(&mut self, api: &ApiRouter, tls: &Arc<ReloadableTls>) -> Result<(), ServeError> {
        let Some((addr, _)) = &self.settings.listeners.tls else {
            return Ok(());
        };
        let (listener, local) = bind_tcp("tls", *addr).await?;
        self.addresses.tls = Some(local);
        let incoming =
            crate::tls::incoming(listener, tls.clone(), self.admission(ListenerKind::Tls));
        self.tasks.push(listener_task(
            &format!("tls {local}"),
            api.clone()
                .serve_with_incoming_shutdown(incoming, self.stopped()),
        ));
        Ok(())
    }

    /// The door speaks TLS with the TLS listener's files when it is set to, plaintext else.
    async fn aws_api(
        &mut self,
        door: Arc<Door>,
        limits: DoorLimits,
        tls: Option<&Arc<ReloadableTls>>,
    ) -> Result<(), ServeError> {
        let Some(listen) = self.settings.listeners.aws_api else {
            return Ok(());
        };
        let (listener, local) = bind_tcp("aws_api", listen.addr).await?;
        self.addresses.aws_api = Some(local);
        let admission = self.admission(ListenerKind::AwsApi);
        let stop = self.shared.stop.clone();
        let stopped = move || crate::drain::stopped(stop.clone());
        let serve = match (tls, listen.tls) {
            (Some(tls), true) => Box::pin(crate::aws_api::serve(
                crate::tls::incoming_http1(listener, tls.clone(), admission),
                door,
                limits,
                stopped,
            )) as Pin<Box<dyn Future<Output = ()> + Send>>,
            _ => Box::pin(crate::aws_api::serve(
                connection::incoming(listener, admission),
                door,
                limits,
                stopped,
            )),
        };
        self.tasks
            .push(background_task(&format!("aws_api {local}"), serve));
        Ok(())
    }

    async fn metrics(&mut self, readiness: &Arc<Readiness>) -> Result<(), ServeError> {
        let Some(addr) = self.settings.metrics_listen else {
            return Ok(());
        };
        let (listener, local) = bind_tcp("metrics", addr).await?;
        self.addresses.metrics = Some(local);
        let serve = crate::probes::serve(
            listener,
            self.shared.metrics.clone(),
            readiness.clone(),
            self.stopped(),
        );
        let name = format!("metrics {local}");
        let listener_name = name.clone();
        self.tasks.push((
            name,
            Box::pin(async move {
                serve.await.map_err(|source| ServeError::Listen {
                    listener: listener_name,
                    source,
                })
            }),
        ));
        Ok(())
    }

    async fn health(&mut self, health: HealthServer<DrainingHealth>) -> Result<(), ServeError> {
        let Some(addr) = self.settings.health_listen else {
            return Ok(());
        };
        let (listener, local) = bind_tcp("health", addr).await?;
        self.addresses.health = Some(local);
        // Health only: no reflection, no API, so it may listen beyond loopback for probes.
        let health_only = hardened(Server::builder(), &self.settings.config).add_service(health);
        let incoming = connection::incoming(listener, self.admission(ListenerKind::Health));
        self.tasks.push(listener_task(
            &format!("health {local}"),
            health_only.serve_with_incoming_shutdown(incoming, self.stopped()),
        ));
        Ok(())
    }
}
