//! What a caller may see of a stored key's verification, decided in one place for every
//! answer that carries one (Watch events, the inventory).

use crate::{domain::Scope, proto, rpc, verify::Report};

/// How much of a stored key's verification an answer tells its caller. The findings
/// (Sids, public principals, the requests that may decrypt) and the access summary (who may
/// decrypt) are a stored key's verification, which only the method's `stored_key_role` may
/// learn; below it, the verdict alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportAudience {
    Whole,
    VerdictOnly,
}

impl ReportAudience {
    /// What `caller` may see of a key in `scope`.
    pub fn of(caller: Option<&rpc::CallerContext>, scope: Scope) -> ReportAudience {
        let may = match caller {
            Some(c) if c.scoped.is_some() => c
                .may_act_in(scope.account_id(), scope.region(), true)
                .is_ok(),
            _ => rpc::CallerContext::may_use_stored_key(caller).is_ok(),
        };
        if may {
            ReportAudience::Whole
        } else {
            ReportAudience::VerdictOnly
        }
    }

    pub fn report(self, report: Report) -> proto::VerificationReport {
        match self {
            ReportAudience::Whole => report.into(),
            // The access summary says who may decrypt with the key: code-reader data, as
            // the findings are.
            ReportAudience::VerdictOnly => proto::VerificationReport {
                passed: report.passed,
                profile: report.profile,
                findings: Vec::new(),
                access: None,
            },
        }
    }
}
