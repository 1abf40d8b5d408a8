//! The client's calls to `/v1/alerts`.

use hyper::Method;

use crate::client::{Client, Error, encode_segment, query};
use crate::types::{
    AlertHistory, AlertList, AlertRules, AlertRulesApplied, ApplyAlertRules, NewSilence, SetAlertRule,
    SilenceInfo, SilenceList,
};

impl Client {
    pub async fn alerts(&self) -> Result<AlertList, Error> {
        self.call(Method::GET, "/v1/alerts", None).await
    }

    pub async fn alert_rules(&self) -> Result<AlertRules, Error> {
        self.call(Method::GET, "/v1/alerts/rules", None).await
    }

    pub async fn apply_alert_rules(&self, body: &ApplyAlertRules) -> Result<AlertRulesApplied, Error> {
        self.call(Method::PUT, "/v1/alerts/rules", Self::json(body)?).await
    }

    pub async fn set_alert_rule(&self, name: &str, body: &SetAlertRule) -> Result<AlertRulesApplied, Error> {
        self.call(Method::PUT, &format!("/v1/alerts/rules/{}", encode_segment(name)), Self::json(body)?).await
    }

    pub async fn remove_alert_rule(&self, name: &str) -> Result<AlertRulesApplied, Error> {
        self.call(Method::DELETE, &format!("/v1/alerts/rules/{}", encode_segment(name)), None).await
    }

    pub async fn silences(&self) -> Result<SilenceList, Error> {
        self.call(Method::GET, "/v1/alerts/silences", None).await
    }

    pub async fn add_silence(&self, body: &NewSilence) -> Result<SilenceInfo, Error> {
        self.call(Method::POST, "/v1/alerts/silences", Self::json(body)?).await
    }

    pub async fn expire_silence(&self, id: &str) -> Result<SilenceInfo, Error> {
        self.call(Method::DELETE, &format!("/v1/alerts/silences/{}", encode_segment(id)), None).await
    }

    pub async fn alert_history(&self, rule: Option<&str>, limit: usize) -> Result<AlertHistory, Error> {
        let limit = limit.to_string();
        let mut pairs = vec![("limit", limit.as_str())];
        if let Some(rule) = rule {
            pairs.push(("rule", rule));
        }
        self.call(Method::GET, &format!("/v1/alerts/history?{}", query(&pairs)), None).await
    }
}
