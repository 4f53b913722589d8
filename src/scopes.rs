//! The scopes the sidecar manages: its own Region of its own account, each account and
//! Region of `[[accounts]]`, and, with `[organization]`, each account the organization
//! lists in its Regions, with what each needs (the principal verification checks there, the
//! role the aws backend assumes). Requests look their scope up here, and a scope not listed
//! is not managed. The configured scopes never change; the organization's are replaced as a
//! whole at each listing ([`ManagedScopes::publish`]), so a reader sees
//! one listing or the next, never a mix.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    config::{Config, OrganizationConfig},
    domain::{Scope, ScopedTarget, Target},
    verify::VerificationSettings,
};

/// What the sidecar needs to act in one managed scope.
#[derive(Debug, Clone)]
pub struct ScopeSettings {
    pub scope: Scope,
    /// What verification checks there: the scope's Region, account and principal (the
    /// principal that calls Inspector there).
    pub verification: Arc<VerificationSettings>,
    /// The aws backend: the role assumed in the scope's account (`None`: the sidecar's own
    /// identity, for its own account).
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
}

/// One set of managed scopes, in a stable order (the sidecar's own first).
#[derive(Debug, Default)]
struct ScopeTable {
    settings: Vec<Arc<ScopeSettings>>,
    /// Account id, then Region: the lookup a request makes with the strings it carries.
    index: HashMap<String, HashMap<String, usize>>,
}

impl ScopeTable {
    fn add(&mut self, settings: ScopeSettings) {
        let scope = settings.scope;
        let regions = self.index.entry(scope.account_id().to_owned()).or_default();
        if regions.contains_key(scope.region()) {
            return;
        }
        regions.insert(scope.region().to_owned(), self.settings.len());
        self.settings.push(Arc::new(settings));
    }

    fn targets(&self) -> impl Iterator<Item = ScopedTarget> + '_ {
        self.settings
            .iter()
            .flat_map(|s| Target::all().map(move |t| ScopedTarget::new(s.scope, t)))
    }

    fn get(&self, account_id: &str, region: &str) -> Option<&Arc<ScopeSettings>> {
        let at = *self.index.get(account_id)?.get(region)?;
        self.settings.get(at)
    }
}

/// The scopes an organization's listing makes, before they are managed.
#[derive(Debug)]
pub struct PreparedScopes(ScopeTable);

impl PreparedScopes {
    /// Their targets.
    pub fn targets(&self) -> impl Iterator<Item = ScopedTarget> + '_ {
        self.0.targets()
    }
}

/// How the scopes changed at a listing of the organization.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScopeChange {
    pub added: Vec<Scope>,
    pub removed: Vec<Scope>,
}

/// Every managed scope.
#[derive(Debug)]
pub struct ManagedScopes {
    own: Scope,
    own_verification: Arc<VerificationSettings>,
    /// The own scope and `[[accounts]]`' scopes, in that order.
    configured: Vec<ScopeSettings>,
    organization: Option<OrganizationConfig>,
    /// The configured scopes, then the organization's last listing's.
    current: ArcSwap<ScopeTable>,
}

impl ManagedScopes {
    /// The scopes of `config`; `own` is what verification checks in the sidecar's own
    /// scope (its Region, account and principal). The organization's accounts are added by
    /// [`ManagedScopes::publish`].
    pub fn new(config: &Config, own: &VerificationSettings) -> ManagedScopes {
        let own_scope = Scope::of(&own.account_id, &own.region);
        let own_verification = Arc::new(own.clone());
        let mut configured = vec![ScopeSettings {
            scope: own_scope,
            verification: own_verification.clone(),
            role_arn: None,
            external_id: None,
        }];
        for account in &config.accounts {
            let principal_arn = account
                .principal_arn
                .clone()
                .unwrap_or_else(|| principal_in(&own.principal_arn, &account.id));
            for region in &account.regions {
                configured.push(ScopeSettings {
                    scope: Scope::of(&account.id, region),
                    verification: Arc::new(own.in_scope(region, &account.id, &principal_arn)),
                    role_arn: account.role_arn.clone(),
                    external_id: account.external_id.clone(),
                });
            }
        }
        let scopes = ManagedScopes {
            own: own_scope,
            own_verification,
            configured,
            organization: config.organization.clone(),
            current: ArcSwap::from_pointee(ScopeTable::default()),
        };
        scopes.current.store(Arc::new(scopes.table_with(&[])));
        scopes
    }

    /// Only the sidecar's own scope.
    pub fn only(own: &VerificationSettings) -> ManagedScopes {
        ManagedScopes::new(&Config::default(), own)
    }

    /// The configured scopes, then each of `organization_accounts` in the organization's
    /// Regions, unless configured (an `[[accounts]]` entry says how its account is managed).
    fn table_with(&self, organization_accounts: &[String]) -> ScopeTable {
        let mut table = ScopeTable::default();
        for settings in &self.configured {
            table.add(settings.clone());
        }
        let Some(organization) = &self.organization else {
            return table;
        };
        let own_account = self.own.account_id();
        for account_id in organization_accounts {
            let configured = self
                .configured
                .iter()
                .any(|s| s.scope.account_id() == account_id && account_id != own_account);
            if configured {
                continue;
            }
            let own = account_id == own_account;
            let principal_arn = if own {
                self.own_verification.principal_arn.clone()
            } else {
                principal_in(&self.own_verification.principal_arn, account_id)
            };
            for region in &organization.regions {
                table.add(ScopeSettings {
                    scope: Scope::of(account_id, region),
                    verification: Arc::new(self.own_verification.in_scope(
                        region,
                        account_id,
                        &principal_arn,
                    )),
                    // The sidecar's own account is reached with its own identity.
                    role_arn: (!own).then(|| organization.role_arn(account_id)),
                    external_id: (!own).then(|| organization.external_id.clone()).flatten(),
                });
            }
        }
        table
    }

    /// The scopes to manage when the organization lists `accounts`: the configured ones,
    /// and each of `accounts` in the organization's Regions. Nothing changes until
    /// [`ManagedScopes::publish`].
    pub fn prepare(&self, accounts: &[String]) -> PreparedScopes {
        PreparedScopes(self.table_with(accounts))
    }

    /// Manages `prepared` from now on; returns what changed.
    pub fn publish(&self, prepared: PreparedScopes) -> ScopeChange {
        let table = prepared.0;
        let before = self.current.load();
        let change = ScopeChange {
            added: table
                .settings
                .iter()
                .map(|s| s.scope)
                .filter(|s| before.get(s.account_id(), s.region()).is_none())
                .collect(),
            removed: before
                .settings
                .iter()
                .map(|s| s.scope)
                .filter(|s| table.get(s.account_id(), s.region()).is_none())
                .collect(),
        };
        self.current.store(Arc::new(table));
        change
    }

    /// Whether the accounts come from AWS Organizations too.
    pub fn organization(&self) -> Option<&OrganizationConfig> {
        self.organization.as_ref()
    }

    /// The sidecar's own scope: what a request that names none is about.
    pub fn own(&self) -> Scope {
        self.own
    }

    /// What verification checks in the sidecar's own scope.
    pub fn own_settings(&self) -> &Arc<VerificationSettings> {
        &self.own_verification
    }

    /// The account and Region a request names, the sidecar's own for an empty one.
    pub fn requested<'a>(&self, account_id: &'a str, region: &'a str) -> (&'a str, &'a str) {
        (
            if account_id.is_empty() {
                self.own.account_id()
            } else {
                account_id
            },
            if region.is_empty() {
                self.own.region()
            } else {
                region
            },
        )
    }

    /// The managed scope of `account_id` in `region` (an empty string: the sidecar's own).
    pub fn find(&self, account_id: &str, region: &str) -> Option<Scope> {
        let (account_id, region) = self.requested(account_id, region);
        self.current.load().get(account_id, region).map(|s| s.scope)
    }

    /// Whether any Region of `account_id` is managed (empty: the sidecar's own account).
    pub fn manages_account(&self, account_id: &str) -> bool {
        account_id.is_empty() || self.current.load().index.contains_key(account_id)
    }

    /// What the sidecar needs in `scope`, when it manages it.
    pub fn settings(&self, scope: Scope) -> Option<Arc<ScopeSettings>> {
        self.current
            .load()
            .get(scope.account_id(), scope.region())
            .cloned()
    }

    /// The settings of a managed scope of `account_id` (its role and external id are the
    /// account's), when one is managed.
    pub fn in_account(&self, account_id: &str) -> Option<Arc<ScopeSettings>> {
        let table = self.current.load();
        let at = *table.index.get(account_id)?.values().next()?;
        table.settings.get(at).cloned()
    }

    /// Every managed scope, as managed now.
    pub fn all(&self) -> Vec<Arc<ScopeSettings>> {
        self.current.load().settings.clone()
    }

    /// Every managed scope's targets, as managed now.
    pub fn targets(&self) -> Vec<ScopedTarget> {
        self.current.load().targets().collect()
    }

    /// How many scopes are managed now.
    pub fn len(&self) -> usize {
        self.current.load().settings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `principal` (a role or user ARN) with the same path and name in `account_id`.
fn principal_in(principal: &str, account_id: &str) -> String {
    let mut parts: Vec<&str> = principal.splitn(6, ':').collect();
    if let Some(account) = parts.get_mut(4) {
        *account = account_id;
    }
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountConfig;

    fn own() -> VerificationSettings {
        VerificationSettings::new(
            "us-east-1".into(),
            "111122223333".into(),
            "arn:aws:iam::111122223333:role/ops/inspector-keyd".into(),
            Vec::new(),
            None,
            crate::verify::Profile::CodeguruGrants,
            crate::verify::Profile::AmazonQCodeRepository,
        )
    }

    #[test]
    fn requests_naming_no_scope_are_about_the_sidecars_own() {
        let config = Config {
            accounts: vec![
                AccountConfig {
                    id: "222233334444".into(),
                    regions: vec!["eu-west-1".into(), "us-east-1".into()],
                    ..AccountConfig::default()
                },
                AccountConfig {
                    id: "111122223333".into(),
                    regions: vec!["us-east-1".into(), "eu-west-1".into()],
                    ..AccountConfig::default()
                },
            ],
            ..Config::default()
        };
        let scopes = ManagedScopes::new(&config, &own());
        assert_eq!(scopes.len(), 4, "the own scope listed again is one scope");
        assert_eq!(scopes.find("", ""), Some(scopes.own()));
        assert_eq!(scopes.find("111122223333", ""), Some(scopes.own()));
        let other = scopes.find("222233334444", "eu-west-1").unwrap();
        assert_eq!(other.to_string(), "222233334444/eu-west-1");
        assert_eq!(
            scopes.settings(other).unwrap().verification.principal_arn,
            "arn:aws:iam::222233334444:role/ops/inspector-keyd"
        );
        assert_eq!(scopes.find("222233334444", "ap-south-1"), None);
        assert_eq!(scopes.find("", "ap-south-1"), None);
        assert_eq!(scopes.find("333344445555", ""), None);
        assert_eq!(scopes.targets().len(), 4 * Target::all().count());
    }

    #[test]
    fn an_organizations_listing_replaces_its_accounts_and_keeps_the_configured_ones() {
        let config = Config {
            backend: crate::config::BackendKind::Aws,
            accounts: vec![AccountConfig {
                id: "222233334444".into(),
                regions: vec!["ap-south-1".into()],
                role_arn: Some("arn:aws:iam::222233334444:role/own-choice".into()),
                ..AccountConfig::default()
            }],
            organization: Some(OrganizationConfig {
                role_name: "ops/keyd-member".into(),
                regions: vec!["us-east-1".into(), "eu-west-1".into()],
                external_id: Some("x-7".into()),
                refresh_interval: std::time::Duration::from_secs(3600),
            }),
            ..Config::default()
        };
        let scopes = ManagedScopes::new(&config, &own());
        assert_eq!(scopes.len(), 2, "before a listing: the configured scopes");
        let listed = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();

        let change = scopes.publish(scopes.prepare(&listed(&[
            "111122223333",
            "222233334444",
            "333344445555",
        ])));
        let names = |scopes: &[Scope]| scopes.iter().map(Scope::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(&change.added),
            [
                "111122223333/eu-west-1",
                "333344445555/us-east-1",
                "333344445555/eu-west-1"
            ],
            "the own account gains the organization's Regions; a configured account keeps its own"
        );
        assert!(change.removed.is_empty());
        let member = scopes
            .settings(scopes.find("333344445555", "eu-west-1").unwrap())
            .unwrap();
        assert_eq!(
            member.role_arn.as_deref(),
            Some("arn:aws:iam::333344445555:role/ops/keyd-member")
        );
        assert_eq!(member.external_id.as_deref(), Some("x-7"));
        assert_eq!(
            member.verification.principal_arn,
            "arn:aws:iam::333344445555:role/ops/inspector-keyd"
        );
        let own_in_listed_region = scopes
            .settings(scopes.find("", "eu-west-1").unwrap())
            .unwrap();
        assert_eq!(own_in_listed_region.role_arn, None, "the own identity");
        let configured = scopes.in_account("222233334444").unwrap();
        assert_eq!(
            configured.role_arn.as_deref(),
            Some("arn:aws:iam::222233334444:role/own-choice")
        );
        assert_eq!(scopes.find("222233334444", "us-east-1"), None);

        let change = scopes.publish(scopes.prepare(&listed(&["111122223333", "444455556666"])));
        assert_eq!(
            names(&change.removed),
            ["333344445555/us-east-1", "333344445555/eu-west-1"],
            "an account no longer listed is no longer managed"
        );
        assert_eq!(change.added.len(), 2);
        assert_eq!(scopes.find("333344445555", "us-east-1"), None);
        assert!(!scopes.manages_account("333344445555"));
        assert!(
            scopes.find("222233334444", "ap-south-1").is_some(),
            "a configured account stays whatever the listing says"
        );
        assert_eq!(scopes.len(), 5);
    }
}
