//! A seeded synthetic history of all three input topics, with scenarios that make each alert
//! fire: the example files, the demo, the benchmarks and `feedback simulate` all come from here.
//!
//! Same seed and settings, same records, byte for byte: the generator uses its own PCG stream and
//! draws in a fixed order.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::event::{Event, FeatureImportance, Forecast, ForecastLine, Outcome, Quantiles, Topic};

/// What goes wrong in a tenant's history, in its last third.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Forecasts track actuals with well-calibrated intervals; no alert should fire.
    Healthy,
    /// Actual revenue falls well below the forecasts: performance alerts.
    Degraded,
    /// The p10..p90 intervals are far too narrow: calibration warn_low.
    Miscalibrated,
    /// Feature importances rotate and feature values shift: drift alerts.
    Drift,
    /// Tenants take healthy, degraded, miscalibrated and drift in turn.
    Mixed,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub tenants: usize,
    pub channels: usize,
    pub campaigns: usize,
    pub days: u32,
    pub start: NaiveDate,
    pub scenario: Scenario,
    /// Share of records replaced by a poison record (bad JSON, wrong types, invalid values).
    pub poison_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            tenants: 4,
            channels: 3,
            campaigns: 2,
            days: 90,
            start: NaiveDate::from_ymd_opt(2026, 8, 1).unwrap_or_default(),
            scenario: Scenario::Mixed,
            poison_rate: 0.0,
        }
    }
}

/// One generated record: a valid event, or a poison payload that validation must refuse.
#[derive(Debug, Clone)]
pub enum SimPayload {
    Event(Event),
    Poison(String),
}

#[derive(Debug, Clone)]
pub struct SimRecord {
    pub topic: Topic,
    pub tenant: String,
    pub payload: SimPayload,
}

impl SimRecord {
    /// The payload's bytes as a producer would send them (JSON).
    pub fn payload_json(&self) -> String {
        match &self.payload {
            SimPayload::Event(Event::Outcome(o)) => serde_json::to_string(o),
            SimPayload::Event(Event::Forecast(f)) => serde_json::to_string(f),
            SimPayload::Event(Event::FeatureImportance(f)) => serde_json::to_string(f),
            SimPayload::Poison(p) => Ok(p.clone()),
        }
        .unwrap_or_default()
    }

    /// The `{"topic", "payload"}` line that `feedback fold` reads.
    pub fn jsonl(&self, topic_name: &str) -> String {
        let payload = match &self.payload {
            // Poison goes as a string, as kcat -J would print bytes that are not a JSON object.
            SimPayload::Poison(p) => serde_json::Value::String(p.clone()).to_string(),
            _ => self.payload_json(),
        };
        format!(
            "{{\"topic\":{},\"payload\":{}}}",
            serde_json::Value::String(topic_name.to_owned()),
            payload
        )
    }
}

fn scenario_of(config: &SimConfig, tenant: usize) -> Scenario {
    match config.scenario {
        Scenario::Mixed => [
            Scenario::Healthy,
            Scenario::Degraded,
            Scenario::Miscalibrated,
            Scenario::Drift,
        ][tenant % 4],
        s => s,
    }
}

/// The tenant names the generator uses: the scenario is part of the name, so a reader of the
/// example files sees at once which tenant should alert on what.
pub fn tenant_name(config: &SimConfig, tenant: usize) -> String {
    let s = match scenario_of(config, tenant) {
        Scenario::Healthy => "healthy",
        Scenario::Degraded => "degraded",
        Scenario::Miscalibrated => "miscal",
        Scenario::Drift => "drift",
        Scenario::Mixed => "mixed",
    };
    format!("{s}-{tenant:03}")
}

const CHANNELS: [&str; 6] = ["meta", "google", "tiktok", "pinterest", "snap", "email"];

fn channel_name(c: usize) -> String {
    match CHANNELS.get(c) {
        Some(name) => (*name).to_owned(),
        None => format!("channel{c}"),
    }
}

/// Per tenant and cell: the expected daily revenue and the spend behind it.
struct Cell {
    channel: String,
    campaign: String,
    base_revenue: f64,
    roas: f64,
}

struct TenantSim {
    name: String,
    scenario: Scenario,
    cells: Vec<Cell>,
}

/// Expected revenue on day `d` (weekly seasonality), before noise.
fn expected(cell: &Cell, day: u32) -> f64 {
    let weekly = [1.0, 0.95, 0.9, 0.95, 1.05, 1.2, 1.1][(day % 7) as usize];
    cell.base_revenue * weekly
}

/// Generates the whole history in event-time order: day by day, the plans issued that day, the
/// outcomes of the day before (connectors report the next morning) and the weekly importances.
pub fn generate(config: &SimConfig) -> Vec<SimRecord> {
    let mut rng = Pcg64Mcg::seed_from_u64(config.seed);
    let noise_sd: f64 = 0.12;
    let noise =
        Normal::new(0.0, noise_sd).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("valid"));
    let tenants: Vec<TenantSim> = (0..config.tenants)
        .map(|t| TenantSim {
            name: tenant_name(config, t),
            scenario: scenario_of(config, t),
            cells: (0..config.channels.max(1))
                .flat_map(|c| (0..config.campaigns.max(1)).map(move |k| (c, k)))
                .map(|(c, k)| Cell {
                    channel: channel_name(c),
                    campaign: format!("cmp-{}", k + 1),
                    base_revenue: 400.0 + 1600.0 * rng.gen::<f64>(),
                    roas: 2.0 + 3.0 * rng.gen::<f64>(),
                })
                .collect(),
        })
        .collect();
    let onset = config.days * 2 / 3;
    let mut out = Vec::new();
    let midnight = |day: u32| {
        let date = config.start + Days::new(u64::from(day));
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
    };
    for day in 0..config.days {
        let date = config.start + Days::new(u64::from(day));
        for tenant in &tenants {
            let late = day >= onset;
            // Plans: weekly, for the next 28 days.
            if day % 7 == 0 {
                let narrow = tenant.scenario == Scenario::Miscalibrated && late;
                // The p10..p90 interval of the lognormal noise: exp(+-z(0.9) sd), z(0.9) = 1.2816.
                let half: f64 = if narrow { 0.01 } else { 1.2816 * noise_sd };
                let lines = (1..=28u32)
                    .flat_map(|h| tenant.cells.iter().map(move |cell| (h, cell)))
                    .map(|(h, cell)| {
                        let p50 = round2(expected(cell, day + h));
                        ForecastLine {
                            date: date + Days::new(u64::from(h)),
                            channel: cell.channel.clone(),
                            campaign_id: cell.campaign.clone(),
                            spend: Some(round2(p50 / cell.roas)),
                            revenue: Quantiles::from_pairs([
                                (10, round2(p50 * (-half).exp())),
                                (50, p50),
                                (90, round2(p50 * half.exp())),
                            ]),
                        }
                    })
                    .collect();
                let forecast = Forecast {
                    tenant: tenant.name.clone(),
                    plan_id: format!("plan-{date}"),
                    model_version: Some("mmm-v12".into()),
                    issued_at: midnight(day).fixed_offset(),
                    lines,
                };
                push(
                    &mut out,
                    &mut rng,
                    config,
                    Topic::Forecasts,
                    &tenant.name,
                    Event::Forecast(forecast),
                );
            }
            // Outcomes of the day before.
            if day >= 1 {
                let d = day - 1;
                let odate = config.start + Days::new(u64::from(d));
                for (i, cell) in tenant.cells.iter().enumerate() {
                    let shock = if tenant.scenario == Scenario::Degraded && d >= onset {
                        0.45
                    } else {
                        1.0
                    };
                    let revenue =
                        round2(expected(cell, d) * shock * f64::exp(noise.sample(&mut rng)));
                    let spend = round2(
                        expected(cell, d) / cell.roas * (1.0 + 0.05 * noise.sample(&mut rng)),
                    );
                    let platform = format!("{}_ads", cell.channel);
                    let outcome = |source: &str, revenue: f64| Outcome {
                        tenant: tenant.name.clone(),
                        date: odate,
                        channel: cell.channel.clone(),
                        campaign_id: cell.campaign.clone(),
                        spend,
                        revenue,
                        source: source.to_owned(),
                        observed_at: Some(midnight(day) + chrono::Duration::hours(3)),
                    };
                    // Where Shopify reports (every other campaign) it has the cart truth and wins
                    // reconciliation, while the ad platform over-attributes by 5 to 15%; elsewhere
                    // the platform's figure is all there is.
                    let reports = if i % 2 == 0 {
                        let platform_revenue = round2(revenue * (1.05 + 0.1 * rng.gen::<f64>()));
                        vec![
                            outcome(&platform, platform_revenue),
                            outcome("shopify", revenue),
                        ]
                    } else {
                        vec![outcome(&platform, revenue)]
                    };
                    for o in reports {
                        push(
                            &mut out,
                            &mut rng,
                            config,
                            Topic::Outcomes,
                            &tenant.name,
                            Event::Outcome(o),
                        );
                    }
                }
            }
            // Importances: weekly, with samples of each channel's spend.
            if day % 7 == 3 {
                let drifting = tenant.scenario == Scenario::Drift && late;
                let mut importances = BTreeMap::new();
                let mut samples = BTreeMap::new();
                let mut channels: Vec<&str> =
                    tenant.cells.iter().map(|c| c.channel.as_str()).collect();
                channels.dedup();
                for (c, name) in channels.into_iter().enumerate() {
                    let weight = if drifting {
                        0.05 + 0.6 * (c as f64)
                    } else {
                        1.0 / (1.0 + c as f64)
                    };
                    importances.insert(
                        format!("{name}_spend"),
                        round4(weight * (1.0 + 0.05 * noise.sample(&mut rng))),
                    );
                    let mean = if drifting { 260.0 } else { 200.0 };
                    let values: Vec<f64> = (0..200)
                        .map(|_| round2(mean * (1.0 + noise.sample(&mut rng))))
                        .collect();
                    samples.insert(format!("{name}_spend"), values);
                }
                importances.insert(
                    "seasonality".into(),
                    round4(0.3 * (1.0 + 0.05 * noise.sample(&mut rng))),
                );
                importances.insert(
                    "price".into(),
                    round4(0.15 * (1.0 + 0.05 * noise.sample(&mut rng))),
                );
                let fi = FeatureImportance {
                    tenant: tenant.name.clone(),
                    model_version: Some("mmm-v12".into()),
                    computed_at: midnight(day),
                    method: Some("shap".into()),
                    importances,
                    samples,
                };
                push(
                    &mut out,
                    &mut rng,
                    config,
                    Topic::FeatureImportances,
                    &tenant.name,
                    Event::FeatureImportance(fi),
                );
            }
        }
    }
    out
}

fn push(
    out: &mut Vec<SimRecord>,
    rng: &mut Pcg64Mcg,
    config: &SimConfig,
    topic: Topic,
    tenant: &str,
    event: Event,
) {
    let payload = if config.poison_rate > 0.0 && rng.gen::<f64>() < config.poison_rate {
        SimPayload::Poison(poison(rng, tenant))
    } else {
        SimPayload::Event(event)
    };
    out.push(SimRecord {
        topic,
        tenant: tenant.to_owned(),
        payload,
    });
}

/// A record validation must refuse, of one of the kinds a real connector gets wrong.
fn poison(rng: &mut Pcg64Mcg, tenant: &str) -> String {
    match rng.gen_range(0..6) {
        0 => format!("{{\"tenant\": \"{tenant}\", \"date\": \"2026-08-0"),
        1 => format!("{{\"tenant\": \"{tenant}\", \"date\": \"2026-08-01\", \"channel\": \"meta\", \"spend\": \"NaN\", \"revenue\": 1}}"),
        2 => format!("{{\"tenant\": \"{tenant}\", \"date\": \"2026-08-01\", \"channel\": \"meta\", \"spend\": -5, \"revenue\": 1}}"),
        3 => "{\"tenant\": \"../etc\", \"date\": \"2026-08-01\", \"channel\": \"meta\", \"spend\": 1, \"revenue\": 1}".to_owned(),
        4 => format!("{{\"tenant\": \"{tenant}\", \"channel\": \"meta\"}}"),
        _ => "[1, 2, 3]".to_owned(),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_records() {
        let c = SimConfig {
            days: 20,
            ..SimConfig::default()
        };
        let a: Vec<String> = generate(&c).iter().map(|r| r.jsonl("t")).collect();
        let b: Vec<String> = generate(&c).iter().map(|r| r.jsonl("t")).collect();
        assert_eq!(a, b);
        let other: Vec<String> = generate(&SimConfig { seed: 7, ..c })
            .iter()
            .map(|r| r.jsonl("t"))
            .collect();
        assert_ne!(a, other);
    }
}
