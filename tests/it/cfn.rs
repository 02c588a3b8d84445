//! The AWS fleet template, `image/cloudformation/keyward-fleet.yaml` (docs/aws-fleet.md):
//! the pinned cfn-lint (`scripts/cfn-lint.sh`, a venv from PyPI under target/) reports no error,
//! warning or informational finding, and the properties security rests on hold. The template is
//! read through cfn-lint's own YAML decoder (`cfn-lint.sh --json`: `!Ref` becomes `Ref`), so
//! these checks see what cfn-lint and CloudFormation see. Each check is also run on copies of
//! the template broken in exactly one place, and must fail on every one of them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

const TEMPLATE: &str = "image/cloudformation/keyward-fleet.yaml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lint_script() -> Command {
    Command::new(repo().join("scripts/cfn-lint.sh"))
}

/// The template as JSON, decoded by cfn-lint.
fn template() -> Value {
    let out = lint_script()
        .arg("--json")
        .arg(repo().join(TEMPLATE))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cfn-lint.sh --json failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fleet_template_passes_cfn_lint() {
    let out = lint_script().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "cfn-lint reported problems in {TEMPLATE}:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("no errors, warnings or informational findings"));
}

#[test]
fn fleet_template_keeps_its_security_properties() {
    let t = template();
    let p = problems(&t);
    assert!(p.is_empty(), "{TEMPLATE}:\n  {}", p.join("\n  "));
}

/// Each mutation breaks one property; the checks must name it.
#[test]
fn fleet_template_checks_fail_on_each_broken_property() {
    let t = template();
    assert!(
        problems(&t).is_empty(),
        "the template itself must pass first"
    );
    use Edit::{Push, Remove, Set};
    let member_rules = "/Resources/MemberSecurityGroup/Properties/SecurityGroupIngress";
    let ltd = "/Resources/LaunchTemplate/Properties/LaunchTemplateData";
    let cases: Vec<(&str, Vec<Edit>, &str)> = vec![
        ("listener TLS", vec![Set("/Resources/Listener/Properties/Protocol".into(), json!("TLS"))], "Listener"),
        ("listener on 8443", vec![Set("/Resources/Listener/Properties/Port".into(), json!(8443))], "443"),
        (
            "listener with a certificate",
            vec![Set(
                "/Resources/Listener/Properties/Certificates".into(),
                json!([{"CertificateArn": "arn:aws:acm:us-east-2:111122223333:certificate/x"}]),
            )],
            "Certificates",
        ),
        ("target group TLS", vec![Set("/Resources/TargetGroup/Properties/Protocol".into(), json!("TLS"))], "TCP"),
        (
            "cross-zone off",
            vec![Set("/Resources/LoadBalancer/Properties/LoadBalancerAttributes/0/Value".into(), json!("false"))],
            "cross_zone",
        ),
        (
            "cross-zone attribute removed",
            vec![Remove("/Resources/LoadBalancer/Properties/LoadBalancerAttributes".into())],
            "cross_zone",
        ),
        (
            "cross-zone off in the target group",
            vec![Set("/Resources/TargetGroup/Properties/TargetGroupAttributes/0/Value".into(), json!("false"))],
            "cross_zone",
        ),
        ("health check on /", vec![Set("/Resources/TargetGroup/Properties/HealthCheckPath".into(), json!("/"))], "/ping"),
        ("RDS single-AZ", vec![Set("/Resources/Database/Properties/MultiAZ".into(), json!(false))], "MultiAZ"),
        ("RDS MultiAZ removed", vec![Remove("/Resources/Database/Properties/MultiAZ".into())], "MultiAZ"),
        (
            "RDS unencrypted",
            vec![Set("/Resources/Database/Properties/StorageEncrypted".into(), json!(false))],
            "StorageEncrypted",
        ),
        (
            "RDS StorageEncrypted removed",
            vec![Remove("/Resources/Database/Properties/StorageEncrypted".into())],
            "StorageEncrypted",
        ),
        (
            "RDS deletion protection off",
            vec![Set("/Resources/Database/Properties/DeletionProtection".into(), json!(false))],
            "DeletionProtection",
        ),
        (
            "RDS public",
            vec![Set("/Resources/Database/Properties/PubliclyAccessible".into(), json!(true))],
            "PubliclyAccessible",
        ),
        (
            "RDS without backups",
            vec![Set("/Resources/Database/Properties/BackupRetentionPeriod".into(), json!(0))],
            "BackupRetentionPeriod",
        ),
        ("admin port from anywhere", vec![Set(format!("{member_rules}/1/CidrIp"), json!("0.0.0.0/0"))], "9444"),
        (
            "attestation port from another parameter",
            vec![Set(format!("{member_rules}/2/CidrIp"), json!({"Ref": "KrsCidr"}))],
            "9445",
        ),
        (
            "all ports from a VPC range, inline",
            vec![Push(member_rules.into(), json!({"IpProtocol": "-1", "CidrIp": "10.0.0.0/8"}))],
            "9444",
        ),
        (
            "a port range over the admin port, standalone rule",
            vec![Set(
                "/Resources/ExtraIngress".into(),
                json!({"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
                    "GroupId": {"Fn::GetAtt": ["MemberSecurityGroup", "GroupId"]},
                    "IpProtocol": "tcp", "FromPort": 9000, "ToPort": 9500,
                    "SourceSecurityGroupId": {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}}}),
            )],
            "9444",
        ),
        (
            "members open to the internet",
            vec![Set(
                format!("{member_rules}/0"),
                json!({"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "CidrIp": "0.0.0.0/0"}),
            )],
            "0.0.0.0/0",
        ),
        (
            "database from a VPC range",
            vec![
                Remove("/Resources/DatabaseSecurityGroup/Properties/SecurityGroupIngress/0/SourceSecurityGroupId".into()),
                Set(
                    "/Resources/DatabaseSecurityGroup/Properties/SecurityGroupIngress/0/CidrIp".into(),
                    json!("10.0.0.0/8"),
                ),
            ],
            "5432",
        ),
        (
            "ASG in one subnet",
            vec![Set(
                "/Resources/Members/Properties/VPCZoneIdentifier".into(),
                json!([{"Ref": "InstanceSubnet1"}]),
            )],
            "subnets",
        ),
        (
            "ASG twice in the same subnet",
            vec![Set(
                "/Resources/Members/Properties/VPCZoneIdentifier".into(),
                json!([{"Ref": "InstanceSubnet1"}, {"Ref": "InstanceSubnet1"}]),
            )],
            "subnets",
        ),
        (
            "ASG on a list parameter of unknown length",
            vec![Set("/Resources/Members/Properties/VPCZoneIdentifier".into(), json!({"Ref": "DbSubnets"}))],
            "subnets",
        ),
        ("ASG MinSize 1", vec![Set("/Resources/Members/Properties/MinSize".into(), json!("1"))], "MinSize"),
        ("IMDSv1 allowed", vec![Set(format!("{ltd}/MetadataOptions/HttpTokens"), json!("optional"))], "HttpTokens"),
        ("SEV-SNP off", vec![Set(format!("{ltd}/CpuOptions/AmdSevSnp"), json!("disabled"))], "AmdSevSnp"),
        (
            "EBS unencrypted",
            vec![Set(format!("{ltd}/BlockDeviceMappings/0/Ebs/Encrypted"), json!(false))],
            "Encrypted",
        ),
        (
            "an instance profile",
            vec![Set(format!("{ltd}/IamInstanceProfile"), json!({"Name": "admin"}))],
            "IamInstanceProfile",
        ),
        (
            "another cfn-lint suppression",
            vec![Set(
                "/Resources/Listener/Metadata".into(),
                json!({"cfn-lint": {"config": {"ignore_checks": ["E3002"]}}}),
            )],
            "ignore_checks",
        ),
        (
            "an output KMS needs removed",
            vec![Remove("/Outputs/XksProxyConnectivity".into())],
            "XksProxyConnectivity",
        ),
    ];
    let mut missed = Vec::new();
    for (what, edits, expect) in &cases {
        let mut m = t.clone();
        for e in edits {
            e.apply(&mut m);
        }
        let p = problems(&m);
        if !p.iter().any(|l| l.contains(expect)) {
            missed.push(format!(
                "{what}: expected a problem naming {expect:?}, got {p:?}"
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "checks that did not fail:\n  {}",
        missed.join("\n  ")
    );
}

/// Every parameter and output of the template is explained in docs/aws-fleet.md.
#[test]
fn fleet_doc_names_every_parameter_and_output() {
    let t = template();
    let doc = std::fs::read_to_string(repo().join("docs/aws-fleet.md")).unwrap();
    let mut missing = Vec::new();
    for section in ["Parameters", "Outputs"] {
        for name in t[section].as_object().unwrap().keys() {
            if !doc.contains(&format!("`{name}`")) {
                missing.push(format!("{section}.{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/aws-fleet.md does not name: {missing:?}"
    );
}

// ---- the checks

/// One line per broken property; empty when the template is as it must be.
fn problems(t: &Value) -> Vec<String> {
    let mut p = Vec::new();
    check_listener(t, &mut p);
    check_cross_zone(t, &mut p);
    check_health_check(t, &mut p);
    check_database(t, &mut p);
    check_ingress(t, &mut p);
    check_group(t, &mut p);
    check_launch_template(t, &mut p);
    check_suppressions(t, &mut p);
    check_outputs(t, &mut p);
    p
}

/// The NLB listener: TCP on 443, no TLS termination, forwarding to a TCP target group.
fn check_listener(t: &Value, p: &mut Vec<String>) {
    let listeners = resources(t, "AWS::ElasticLoadBalancingV2::Listener");
    if listeners.len() != 1 {
        p.push(format!(
            "Listener: expected exactly one, found {}",
            listeners.len()
        ));
    }
    for (name, r) in listeners {
        if r["Protocol"] != json!("TCP") {
            p.push(format!(
                "Listener {name}: Protocol {} (must be TCP: TLS passed through)",
                r["Protocol"]
            ));
        }
        if port(&r["Port"]) != Some(443) {
            p.push(format!(
                "Listener {name}: Port {} (KMS connects to 443)",
                r["Port"]
            ));
        }
        for k in ["Certificates", "SslPolicy", "AlpnPolicy"] {
            if !r[k].is_null() {
                p.push(format!(
                    "Listener {name}: {k} set (the NLB must not terminate TLS)"
                ));
            }
        }
        let actions = r["DefaultActions"].as_array().cloned().unwrap_or_default();
        if actions.is_empty() {
            p.push(format!("Listener {name}: no DefaultActions"));
        }
        for a in actions {
            let tg = a["TargetGroupArn"]["Ref"].as_str().unwrap_or_default();
            let tgp = &t["Resources"][tg]["Properties"];
            if a["Type"] != json!("forward") || tgp["Protocol"] != json!("TCP") {
                p.push(format!(
                    "Listener {name}: must forward to a TCP target group, not {a}"
                ));
            }
        }
    }
}

/// Cross-zone load balancing on at the NLB, and not turned off in a target group.
fn check_cross_zone(t: &Value, p: &mut Vec<String>) {
    let key = "load_balancing.cross_zone.enabled";
    let lbs = resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer");
    if lbs.is_empty() {
        p.push("LoadBalancer: none".into());
    }
    for (name, r) in lbs {
        if r["Type"] != json!("network") {
            p.push(format!(
                "LoadBalancer {name}: Type {} (must be network)",
                r["Type"]
            ));
        }
        if attribute(&r["LoadBalancerAttributes"], key) != Some("true") {
            p.push(format!("LoadBalancer {name}: {key} is not \"true\""));
        }
    }
    for (name, r) in resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup") {
        if let Some(v) = attribute(&r["TargetGroupAttributes"], key) {
            if v != "true" && v != "use_load_balancer_configuration" {
                p.push(format!("TargetGroup {name}: {key} is {v:?}"));
            }
        }
    }
}

/// The target group checks HTTPS GET /ping (or TCP).
fn check_health_check(t: &Value, p: &mut Vec<String>) {
    for (name, r) in resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup") {
        match r["HealthCheckProtocol"].as_str() {
            Some("TCP") => {}
            Some("HTTPS") if r["HealthCheckPath"] == json!("/ping") => {}
            _ => p.push(format!(
                "TargetGroup {name}: health check {} {} (must be HTTPS on /ping, or TCP)",
                r["HealthCheckProtocol"], r["HealthCheckPath"]
            )),
        }
    }
}

/// RDS: Multi-AZ, encrypted, deletion protection, backups of at least 7 days, not public.
fn check_database(t: &Value, p: &mut Vec<String>) {
    let dbs = resources(t, "AWS::RDS::DBInstance");
    if dbs.is_empty() {
        p.push("RDS: no DBInstance".into());
    }
    for (name, r) in dbs {
        for k in ["MultiAZ", "StorageEncrypted", "DeletionProtection"] {
            if !is_true(&r[k]) {
                p.push(format!("RDS {name}: {k} is {} (must be true)", r[k]));
            }
        }
        if !is_false(&r["PubliclyAccessible"]) {
            p.push(format!("RDS {name}: PubliclyAccessible must be false"));
        }
        let days = match &r["BackupRetentionPeriod"] {
            Value::Object(o) if o.contains_key("Ref") => {
                let param = &t["Parameters"][o["Ref"].as_str().unwrap_or_default()];
                number(&param["MinValue"])
            }
            v => number(v),
        };
        if days.unwrap_or(0) < 7 {
            p.push(format!("RDS {name}: BackupRetentionPeriod below 7 days"));
        }
        let policy = &t["Resources"][name]["DeletionPolicy"];
        if policy != &json!("Snapshot") && policy != &json!("Retain") {
            p.push(format!(
                "RDS {name}: DeletionPolicy {policy} (Snapshot or Retain)"
            ));
        }
    }
}

/// One ingress rule of a security group, wherever it is written.
struct Rule {
    group: String,
    rule: Value,
}

/// Every ingress rule: inline (both branches of an Fn::If) and AWS::EC2::SecurityGroupIngress.
fn ingress_rules(t: &Value) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (name, r) in resources(t, "AWS::EC2::SecurityGroup") {
        for rule in flatten(&r["SecurityGroupIngress"]) {
            rules.push(Rule {
                group: name.to_string(),
                rule,
            });
        }
    }
    for (_, r) in resources(t, "AWS::EC2::SecurityGroupIngress") {
        let group = group_name(&r["GroupId"]).unwrap_or_else(|| format!("{}", r["GroupId"]));
        rules.push(Rule {
            group,
            rule: r.clone(),
        });
    }
    rules
}

/// Admin (9444) and attestation (9445) only from `OperatorCidr`; nothing from the whole
/// internet but 443 on the NLB; the database port only from the members' group.
fn check_ingress(t: &Value, p: &mut Vec<String>) {
    let members = member_groups(t);
    let databases: Vec<String> = resources(t, "AWS::RDS::DBInstance")
        .into_iter()
        .flat_map(|(_, r)| flatten(&r["VPCSecurityGroups"]))
        .filter_map(|v| group_name(&v))
        .collect();
    let rules = ingress_rules(t);
    for port in [9444, 9445] {
        let mut from_operator = false;
        for Rule { group, rule } in &rules {
            if !members.contains(group) || !covers(rule, port) {
                continue;
            }
            let only_operator = rule["CidrIp"] == json!({"Ref": "OperatorCidr"})
                && [
                    "CidrIpv6",
                    "SourceSecurityGroupId",
                    "SourcePrefixListId",
                    "SourceSecurityGroupName",
                ]
                .iter()
                .all(|k| rule[*k].is_null());
            if only_operator {
                from_operator = true;
            } else {
                p.push(format!(
                    "port {port} of {group} open to more than OperatorCidr: {rule}"
                ));
            }
        }
        if !from_operator {
            p.push(format!("port {port}: no rule from OperatorCidr"));
        }
    }
    for Rule { group, rule } in &rules {
        let anywhere = rule["CidrIp"] == json!("0.0.0.0/0") || rule["CidrIpv6"] == json!("::/0");
        let nlb_443 = !members.contains(group)
            && !databases.contains(group)
            && number(&rule["FromPort"]) == Some(443)
            && number(&rule["ToPort"]) == Some(443);
        if anywhere && !nlb_443 {
            p.push(format!(
                "{group}: ingress from 0.0.0.0/0 (only the NLB's 443 may be): {rule}"
            ));
        }
        if databases.contains(group) {
            let from_members = group_name(&rule["SourceSecurityGroupId"])
                .is_some_and(|g| members.contains(&g))
                && ["CidrIp", "CidrIpv6", "SourcePrefixListId"]
                    .iter()
                    .all(|k| rule[*k].is_null());
            if !from_members || !covers(rule, 5432) || number(&rule["ToPort"]) != Some(5432) {
                p.push(format!(
                    "{group}: database ingress must be 5432 from the members only: {rule}"
                ));
            }
        }
    }
    if databases.is_empty() {
        p.push("RDS: no VPCSecurityGroups (5432 would follow the VPC default group)".into());
    }
}

/// The Auto Scaling group: MinSize at least 2, in at least two distinct subnet parameters
/// that are there whatever the conditions.
fn check_group(t: &Value, p: &mut Vec<String>) {
    let groups = resources(t, "AWS::AutoScaling::AutoScalingGroup");
    if groups.is_empty() {
        p.push("AutoScalingGroup: none".into());
    }
    for (name, r) in groups {
        if number(&r["MinSize"]).unwrap_or(0) < 2 {
            p.push(format!(
                "AutoScalingGroup {name}: MinSize {} (at least 2)",
                r["MinSize"]
            ));
        }
        let mut subnets: Vec<&str> = r["VPCZoneIdentifier"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v["Ref"].as_str())
                    .filter(|s| t["Parameters"][*s]["Type"] == json!("AWS::EC2::Subnet::Id"))
                    .collect()
            })
            .unwrap_or_default();
        subnets.sort_unstable();
        subnets.dedup();
        if subnets.len() < 2 {
            p.push(format!(
                "AutoScalingGroup {name}: VPCZoneIdentifier must name at least 2 distinct subnets unconditionally, has {subnets:?}"
            ));
        }
    }
}

/// The members: SEV-SNP on, IMDSv2 only, every EBS volume encrypted, no instance profile.
fn check_launch_template(t: &Value, p: &mut Vec<String>) {
    let lts = resources(t, "AWS::EC2::LaunchTemplate");
    if lts.is_empty() {
        p.push("LaunchTemplate: none".into());
    }
    for (name, r) in lts {
        let d = &r["LaunchTemplateData"];
        if d["CpuOptions"]["AmdSevSnp"] != json!("enabled") {
            p.push(format!(
                "LaunchTemplate {name}: CpuOptions.AmdSevSnp must be enabled"
            ));
        }
        if d["MetadataOptions"]["HttpTokens"] != json!("required") {
            p.push(format!(
                "LaunchTemplate {name}: MetadataOptions.HttpTokens must be required (IMDSv2 only)"
            ));
        }
        let disks = d["BlockDeviceMappings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if disks.is_empty() {
            p.push(format!("LaunchTemplate {name}: no BlockDeviceMappings (EBS encryption would follow the account default)"));
        }
        for b in disks {
            if !is_true(&b["Ebs"]["Encrypted"]) {
                p.push(format!(
                    "LaunchTemplate {name}: {} Ebs.Encrypted must be true",
                    b["DeviceName"]
                ));
            }
        }
        if !d["IamInstanceProfile"].is_null() {
            p.push(format!(
                "LaunchTemplate {name}: IamInstanceProfile set (a member calls no AWS API)"
            ));
        }
    }
}

/// The one cfn-lint suppression is W1011 on the database (its comment says why).
fn check_suppressions(t: &Value, p: &mut Vec<String>) {
    for (name, r) in t["Resources"].as_object().into_iter().flatten() {
        let ignored = &r["Metadata"]["cfn-lint"]["config"]["ignore_checks"];
        if ignored.is_null() {
            continue;
        }
        if !(name == "Database" && ignored == &json!(["W1011"])) {
            p.push(format!(
                "{name}: cfn-lint ignore_checks {ignored} (only W1011 on Database is explained)"
            ));
        }
    }
    if !t["Metadata"]["cfn-lint"].is_null() {
        p.push("template Metadata cfn-lint: ignore_checks at the top level".into());
    }
}

/// What `aws kms create-custom-key-store` needs is in the outputs.
fn check_outputs(t: &Value, p: &mut Vec<String>) {
    for k in [
        "XksProxyUriEndpoint",
        "XksProxyUriPath",
        "XksProxyConnectivity",
        "XksProxyVpcEndpointServiceName",
        "CreateCustomKeyStoreCommand",
    ] {
        if t["Outputs"][k].is_null() {
            p.push(format!("Outputs: {k} missing"));
        }
    }
}

// ---- helpers

fn resources<'a>(t: &'a Value, ty: &str) -> Vec<(&'a str, &'a Value)> {
    t["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"] == json!(ty))
        .map(|(n, r)| (n.as_str(), &r["Properties"]))
        .collect()
}

/// The list items of `v`, both branches of each Fn::If, without AWS::NoValue.
fn flatten(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.iter().flat_map(flatten).collect(),
        Value::Object(o) if o.contains_key("Fn::If") => o["Fn::If"]
            .as_array()
            .map(|a| a.iter().skip(1).flat_map(flatten).collect())
            .unwrap_or_default(),
        Value::Object(o) if o.get("Ref") == Some(&json!("AWS::NoValue")) => vec![],
        Value::Null => vec![],
        v => vec![v.clone()],
    }
}

/// The security group resource a `Ref` or `Fn::GetAtt [X, GroupId]` names.
fn group_name(v: &Value) -> Option<String> {
    v["Ref"]
        .as_str()
        .or_else(|| v["Fn::GetAtt"][0].as_str())
        .map(str::to_string)
}

/// The groups the launch template puts on the members.
fn member_groups(t: &Value) -> Vec<String> {
    resources(t, "AWS::EC2::LaunchTemplate")
        .into_iter()
        .flat_map(|(_, r)| flatten(&r["LaunchTemplateData"]["SecurityGroupIds"]))
        .filter_map(|v| group_name(&v))
        .collect()
}

/// Whether a rule lets `port` in (all protocols, or TCP with the port in its range).
fn covers(rule: &Value, port: i64) -> bool {
    match rule["IpProtocol"]
        .as_str()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("-1") | Some("all") => true,
        Some("tcp") | Some("6") => match (number(&rule["FromPort"]), number(&rule["ToPort"])) {
            (Some(a), Some(b)) => (a == -1 && b == -1) || (a <= port && port <= b),
            _ => true,
        },
        _ => false,
    }
}

fn attribute<'a>(attrs: &'a Value, key: &str) -> Option<&'a str> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["Key"] == json!(key))
        .and_then(|a| a["Value"].as_str())
}

fn number(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn port(v: &Value) -> Option<i64> {
    number(v)
}

fn is_true(v: &Value) -> bool {
    v == &json!(true) || v == &json!("true")
}

fn is_false(v: &Value) -> bool {
    v == &json!(false) || v == &json!("false")
}

/// One change to a template, at a JSON pointer.
enum Edit {
    Set(String, Value),
    Remove(String),
    Push(String, Value),
}

impl Edit {
    fn apply(&self, t: &mut Value) {
        match self {
            Edit::Set(pointer, v) => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                match t.pointer_mut(parent) {
                    Some(Value::Array(a)) => a[key.parse::<usize>().unwrap()] = v.clone(),
                    Some(Value::Object(o)) => {
                        o.insert(key.to_string(), v.clone());
                    }
                    _ => panic!("{parent} is not in the template"),
                }
            }
            Edit::Remove(pointer) => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                let o = t.pointer_mut(parent).and_then(Value::as_object_mut);
                assert!(
                    o.and_then(|o| o.remove(key)).is_some(),
                    "{pointer} is not in the template"
                );
            }
            Edit::Push(pointer, v) => t
                .pointer_mut(pointer)
                .and_then(Value::as_array_mut)
                .unwrap_or_else(|| panic!("{pointer} is not a list in the template"))
                .push(v.clone()),
        }
    }
}
