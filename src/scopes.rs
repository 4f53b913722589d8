//! The scopes the sidecar manages: its own Region of its own account, and each account and
//! Region of `[[accounts]]`, with what each needs (the principal verification checks
//! there, the role the aws backend assumes). Built once at start from the configuration;
//! requests look their scope up here, and a scope not listed is not managed.

use std::{collections::HashMap, sync::Arc};

use crate::{
    config::Config,
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

/// Every managed scope, in a stable order (the sidecar's own first).
#[derive(Debug, Clone)]
pub struct ManagedScopes {
    own: Scope,
    own_verification: Arc<VerificationSettings>,
    settings: Vec<ScopeSettings>,
    /// Account id, then Region: the lookup a request makes with the strings it carries.
    index: HashMap<String, HashMap<String, usize>>,
}

impl ManagedScopes {
    /// The scopes of `config`; `own` is what verification checks in the sidecar's own
    /// scope (its Region, account and principal).
    pub fn new(config: &Config, own: &VerificationSettings) -> ManagedScopes {
        let own_scope = Scope::of(&own.account_id, &own.region);
        let own_verification = Arc::new(own.clone());
        let mut scopes = ManagedScopes {
            own: own_scope,
            own_verification: own_verification.clone(),
            settings: Vec::new(),
            index: HashMap::new(),
        };
        scopes.add(ScopeSettings {
            scope: own_scope,
            verification: own_verification,
            role_arn: None,
            external_id: None,
        });
        for account in &config.accounts {
            let principal_arn = account
                .principal_arn
                .clone()
                .unwrap_or_else(|| principal_in(&own.principal_arn, &account.id));
            for region in &account.regions {
                scopes.add(ScopeSettings {
                    scope: Scope::of(&account.id, region),
                    verification: Arc::new(own.in_scope(region, &account.id, &principal_arn)),
                    role_arn: account.role_arn.clone(),
                    external_id: account.external_id.clone(),
                });
            }
        }
        scopes
    }

    /// Only the sidecar's own scope.
    pub fn only(own: &VerificationSettings) -> ManagedScopes {
        ManagedScopes::new(&Config::default(), own)
    }

    fn add(&mut self, settings: ScopeSettings) {
        let scope = settings.scope;
        let regions = self.index.entry(scope.account_id().to_owned()).or_default();
        if regions.contains_key(scope.region()) {
            return;
        }
        regions.insert(scope.region().to_owned(), self.settings.len());
        self.settings.push(settings);
    }

    /// The sidecar's own scope: what a request that names none is about.
    pub fn own(&self) -> Scope {
        self.own
    }

    /// What verification checks in the sidecar's own scope.
    pub fn own_settings(&self) -> &VerificationSettings {
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
        let at = *self.index.get(account_id)?.get(region)?;
        self.settings.get(at).map(|s| s.scope)
    }

    /// Whether any Region of `account_id` is managed (empty: the sidecar's own account).
    pub fn manages_account(&self, account_id: &str) -> bool {
        account_id.is_empty() || self.index.contains_key(account_id)
    }

    /// What the sidecar needs in `scope`, when it manages it.
    pub fn settings(&self, scope: Scope) -> Option<&ScopeSettings> {
        let at = *self.index.get(scope.account_id())?.get(scope.region())?;
        self.settings.get(at)
    }

    /// Every managed scope.
    pub fn iter(&self) -> impl Iterator<Item = &ScopeSettings> {
        self.settings.iter()
    }

    /// Every managed scope's targets.
    pub fn targets(&self) -> impl Iterator<Item = ScopedTarget> + '_ {
        self.settings
            .iter()
            .flat_map(|s| Target::all().map(move |t| ScopedTarget::new(s.scope, t)))
    }

    /// How many scopes are managed.
    pub fn len(&self) -> usize {
        self.settings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
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
        assert_eq!(scopes.targets().count(), 4 * Target::all().count());
    }
}
