//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics: the
//! holder renews `renewTime` every retry period by an update conditioned on the Lease's
//! resourceVersion; a candidate takes the Lease over once it has seen the same record unchanged
//! for `leaseDurationSeconds` (measured on its own monotonic clock, never by comparing clocks
//! across machines), or at once when the holder released it on a graceful shutdown.
//!
//! A leader that has not renewed within its renew deadline stops acting. The deadline is counted
//! from the start of the last renewal that succeeded, so `Leadership::is_leading` turns false
//! before any candidate can have waited out the lease duration — even if the leader's process was
//! paused and nothing ran to notice: callers check it right before every action.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How one elected component takes part. See ARCHITECTURE.md for why the defaults are what
/// they are.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity` (unique per process).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Keelson's defaults (Kubernetes': 15 s, 10 s, 2 s).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(4);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(3);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_millis(250);

impl ElectionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return Err(
                "--leader-elect-renew-deadline must be greater than --leader-elect-retry-period (with its jitter)"
                    .into(),
            );
        }
        if self.retry_period.is_zero() {
            return Err("--leader-elect-retry-period must be positive".into());
        }
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return Err("leader election needs a resource name, a namespace and an identity".into());
        }
        Ok(())
    }
}

/// Waits between attempts are the retry period stretched by up to this factor, so that
/// candidates started together do not keep colliding.
const JITTER_FACTOR: f64 = 1.1;

/// Whether this replica leads, as the elector last established it.
#[derive(Clone)]
pub struct Leadership {
    /// The instant until which this replica may act as leader; None while it does not lead.
    rx: watch::Receiver<Option<Instant>>,
    /// The sender, kept here when no elector owns it (`always`).
    _sender: Option<Arc<watch::Sender<Option<Instant>>>>,
}

impl Leadership {
    /// True while this replica leads. Check it right before acting.
    pub fn is_leading(&self) -> bool {
        self.rx.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Resolves once this replica leads.
    pub async fn acquired(&mut self) {
        let _ = self.rx.wait_for(|v| v.is_some()).await;
    }

    /// Resolves once this replica no longer leads (its deadline passed or it released the lease).
    pub async fn lost(&mut self) {
        loop {
            let until = *self.rx.borrow_and_update();
            match until {
                None => return,
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {
                            if !self.is_leading() {
                                return;
                            }
                        }
                        changed = self.rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// A Leadership that always leads (for `--leader-elect=false`).
    pub fn always() -> Leadership {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(Some(far));
        Leadership { rx, _sender: Some(Arc::new(tx)) }
    }
}

/// Runs the election until `stop` resolves, then releases the lease if it holds it.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    tx: Arc<watch::Sender<Option<Instant>>>,
    /// The record last seen and when it was first seen in that form.
    observed: Option<(LeaseSpec, Instant)>,
    /// The Lease as last written by this replica while leading.
    mine: Option<Lease>,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * (JITTER_FACTOR - 1.0))
}

impl Elector {
    pub fn new(client: kube::Client, config: ElectionConfig) -> Result<(Elector, Leadership), String> {
        config.validate()?;
        let (tx, rx) = watch::channel(None);
        let api = Api::namespaced(client, &config.namespace);
        Ok((Elector { api, config, tx: Arc::new(tx), observed: None, mine: None }, Leadership { rx, _sender: None }))
    }

    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            // Candidate: try every retry period until this replica holds the lease.
            loop {
                let started = Instant::now();
                match self.try_acquire_or_renew().await {
                    Ok(true) => {
                        self.tx.send_replace(Some(started + self.config.renew_deadline));
                        tracing::info!(lease = %self.lease_name(), identity = %self.config.identity, "became leader");
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(lease = %self.lease_name(), error = %e, "cannot reach the lease"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(jittered(self.config.retry_period)) => {}
                    _ = &mut stop => return,
                }
            }
            // Leader: renew every retry period; give up once the renew deadline passes.
            let mut deadline = Instant::now() + self.config.renew_deadline;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.retry_period) => {}
                    _ = &mut stop => {
                        self.release().await;
                        return;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                let renewed = tokio::time::timeout(deadline - started, self.try_acquire_or_renew()).await;
                match renewed {
                    Ok(Ok(true)) => {
                        deadline = started + self.config.renew_deadline;
                        self.tx.send_replace(Some(deadline));
                    }
                    Ok(Ok(false)) => break,
                    Ok(Err(e)) => tracing::warn!(lease = %self.lease_name(), error = %e, "lease not renewed"),
                    Err(_) => {}
                }
            }
            self.tx.send_replace(None);
            self.mine = None;
            tracing::warn!(lease = %self.lease_name(), identity = %self.config.identity, "leadership lost");
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn our_spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = now_micro();
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.config.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs_f64().ceil() as i32),
            acquire_time: if ours { previous.and_then(|p| p.acquire_time.clone()) } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(if ours || previous.is_none() { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One attempt; Ok(true) when this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        // While leading, update the lease as last written; only a conflict needs a read.
        if let Some(mut lease) = self.mine.take() {
            lease.spec = Some(self.our_spec(lease.spec.as_ref()));
            match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
                Ok(l) => {
                    self.mine = Some(l);
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.our_spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.mine = Some(l);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                self.observed = Some((spec.clone(), now));
                now
            }
        };
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        if !holder.is_empty() && holder != self.config.identity && now < observed_at + duration {
            return Ok(false);
        }
        lease.spec = Some(self.our_spec(Some(&spec)));
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(l) => {
                self.mine = Some(l);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (graceful shutdown), so that a candidate takes over at once.
    async fn release(&mut self) {
        self.tx.send_replace(None);
        let Some(mut lease) = self.mine.take() else { return };
        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
        let now = now_micro();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: transitions,
            ..Default::default()
        });
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.lease_name(), "lease released"),
            Err(e) => tracing::warn!(lease = %self.lease_name(), error = %e, "cannot release the lease"),
        }
    }
}

/// Kubernetes' leader-election flags, shared by every elected component.
#[derive(clap::Args, Debug, Clone)]
pub struct ElectionFlags {
    /// Elect a leader among the replicas before acting (`--leader-elect=false` to act at once).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a candidate waits, after the last renewal it saw, before taking the lease over.
    #[arg(long, default_value = "4s", value_parser = crate::process::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops acting.
    #[arg(long, default_value = "3s", value_parser = crate::process::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews and candidates try to acquire.
    #[arg(long, default_value = "250ms", value_parser = crate::process::parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// The Lease's name (default: the component's, e.g. kube-scheduler).
    #[arg(long)]
    pub leader_elect_resource_name: Option<String>,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,
}

impl ElectionFlags {
    pub fn config(&self, default_name: &str) -> ElectionConfig {
        ElectionConfig {
            namespace: self.leader_elect_resource_namespace.clone(),
            name: self.leader_elect_resource_name.clone().unwrap_or_else(|| default_name.to_string()),
            identity: identity(),
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }

    /// Starts the election (or none, with `--leader-elect=false`); the task ends when `stop` does.
    pub fn start(
        &self,
        client: kube::Client,
        default_name: &str,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(Leadership, Option<tokio::task::JoinHandle<()>>, String), String> {
        if !self.leader_elect {
            return Ok((Leadership::always(), None, identity()));
        }
        let config = self.config(default_name);
        let id = config.identity.clone();
        let (elector, leadership) = Elector::new(client, config)?;
        Ok((leadership, Some(tokio::spawn(elector.run(stop))), id))
    }
}

/// Runs an elected component: `body` gets the leadership, this replica's identity and a future
/// that resolves when it should stop (on `stop`); the lease is released only after `body` has
/// returned, so that a successor never acts while this replica still does.
pub async fn run_elected<Fut>(
    flags: &ElectionFlags,
    client: kube::Client,
    lease_name: &str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    body: impl FnOnce(Leadership, String, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
) -> anyhow::Result<()>
where
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (leadership, elector, identity) =
        flags.start(client, lease_name, wait(stop_rx.clone())).map_err(anyhow::Error::msg)?;
    let on_signal = stop_tx.clone();
    let signal = tokio::spawn(async move {
        stop.await;
        let _ = on_signal.send(true);
    });
    let result = body(leadership, identity, Box::pin(wait(stop_rx))).await;
    let _ = stop_tx.send(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    signal.abort();
    result
}

/// client-go's identity for a replica: the host's name and a unique suffix.
pub fn identity() -> String {
    let host = crate::process::hostname().unwrap_or_else(|| "keelson".to_string());
    format!("{host}_{}", uuid::Uuid::new_v4())
}
