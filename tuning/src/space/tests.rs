use super::serde_impls::RawDistribution;
use super::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn p(text: &str) -> Distribution {
    Distribution::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn parses_the_seed_forms() {
    assert_eq!(
        p("uniform(0, 0.5)"),
        Distribution::Float {
            low: 0.0,
            high: 0.5,
            log: false,
            step: None
        }
    );
    assert_eq!(
        p(" loguniform( 1e-5 ,1e-2 ) "),
        Distribution::Float {
            low: 1e-5,
            high: 1e-2,
            log: true,
            step: None
        }
    );
    assert_eq!(
        p("int(1, 5)"),
        Distribution::Int {
            low: 1,
            high: 5,
            log: false,
            step: 1
        }
    );
    assert_eq!(
        p("int(16, 512, step=16)"),
        Distribution::Int {
            low: 16,
            high: 512,
            log: false,
            step: 16
        }
    );
    assert_eq!(
        p("intlog(16, 512)"),
        Distribution::Int {
            low: 16,
            high: 512,
            log: true,
            step: 1
        }
    );
    assert_eq!(
        p("choice(16, 32, 64)"),
        Distribution::Categorical {
            choices: vec![16.into(), 32.into(), 64.into()]
        }
    );
    assert_eq!(
        p("choice(adam, sgd)"),
        Distribution::Categorical {
            choices: vec!["adam".into(), "sgd".into()]
        }
    );
    assert_eq!(
        p("choice(true, 0.5, \"a b\", -3)"),
        Distribution::Categorical {
            choices: vec![Choice::Bool(true), Choice::Float(0.5), "a b".into(), Choice::Int(-3)]
        }
    );
    assert_eq!(
        p("uniform(-1,1,step=0.5)"),
        Distribution::Float {
            low: -1.0,
            high: 1.0,
            log: false,
            step: Some(0.5)
        }
    );
}

#[test]
fn display_is_the_textual_form() {
    for text in [
        "uniform(0.0, 0.5)",
        "loguniform(1e-5, 0.01)",
        "int(1, 5)",
        "int(16, 512, step=16)",
        "intlog(16, 512)",
        "choice(16, 32, 64)",
        "choice(adam, sgd, \"two words\", \"true\", false, 1.0)",
    ] {
        assert_eq!(p(text).to_string(), text);
    }
}

fn err(text: &str) -> String {
    match Distribution::parse(text) {
        Ok(d) => panic!("{text} parsed as {d:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_specs_say_what_and_where() {
    let cases = [
        ("uniform(1, 0)", None, "low (1) must be below high (0)"),
        ("loguniform(0, 1)", None, "needs low > 0"),
        ("int(1.5, 4)", Some(5), "low must be an integer"),
        ("int(0, 10, step=3)", None, "not a multiple of step 3"),
        ("int(0, 10, step=0)", None, "step must be at least 1"),
        ("intlog(0, 10)", None, "needs low >= 1"),
        ("choice()", Some(1), "choice needs at least one value"),
        ("choice(a, b, a)", None, "choice `a` is listed twice"),
        ("gauss(0, 1)", Some(1), "unknown distribution `gauss`"),
        ("uniform(0 1)", Some(11), "expected `,` or `)`, found `1`"),
        (
            "uniform(0, 1",
            Some(13),
            "expected `,` or `)`, found the end of the text",
        ),
        ("uniform(0, 1) x", Some(15), "unexpected `x`"),
        ("uniform(0, 1, 2)", Some(15), "takes two bounds (low, high), got 3"),
        ("uniform(0, 1, stp=0.1)", Some(19), "unknown option `stp`"),
        ("uniform(0, abc)", Some(12), "high must be a number"),
        ("uniform(0, 1e999)", Some(12), "`1e999` is not a number"),
        ("uniform(0, 1, step=0.3)", None, "not a whole number of steps"),
        ("choice(\"abc)", Some(8), "unterminated quoted string"),
        ("", Some(1), "expected a distribution"),
    ];
    for (text, column, want) in cases {
        let got = err(text);
        assert!(got.contains(want), "{text}: got `{got}`, want `{want}`");
        if let Some(c) = column {
            assert!(
                got.starts_with(&format!("at column {c} of `{text}`: ")),
                "{text}: got `{got}`"
            );
        }
    }
    let named = ParamSpec::parse("lr", "loguniform(-1, 1)").unwrap_err().to_string();
    assert!(named.starts_with("parameter `lr`: "), "{named}");
}

#[test]
fn space_rejects_duplicates_and_bad_names() {
    let d = p("uniform(0, 1)");
    let dup = SearchSpace::new(vec![ParamSpec::new("x", d.clone()), ParamSpec::new("x", d.clone())]);
    assert_eq!(dup.unwrap_err(), SpaceError::DuplicateName("x".into()));
    assert!(matches!(
        SearchSpace::new(vec![ParamSpec::new("a b", d.clone())]),
        Err(SpaceError::BadName(_))
    ));
    let bad = ParamSpec::new(
        "lr",
        Distribution::Float {
            low: 1.0,
            high: 0.0,
            log: false,
            step: None,
        },
    );
    assert!(
        SearchSpace::new(vec![bad])
            .unwrap_err()
            .to_string()
            .starts_with("parameter `lr`")
    );
}

#[test]
fn internal_representation_handles_log_steps_and_choices() {
    let lr = p("loguniform(1e-5, 1e-2)");
    assert!((lr.to_internal(&ParamValue::Float(1e-3)).unwrap() - (1e-3f64).ln()).abs() < 1e-12);
    assert_eq!(lr.from_internal(10.0), ParamValue::Float(1e-2));
    let bs = p("int(16, 512, step=16)");
    assert_eq!(bs.from_internal(40.0), ParamValue::Int(48));
    assert_eq!(bs.from_internal(-100.0), ParamValue::Int(16));
    assert!(bs.contains(&ParamValue::Int(32)) && !bs.contains(&ParamValue::Int(33)));
    assert!(!bs.contains(&ParamValue::Float(32.0)));
    let opt = p("choice(adam, sgd, rmsprop)");
    assert_eq!(opt.to_internal(&ParamValue::Categorical("sgd".into())), Some(1.0));
    assert_eq!(opt.from_unit(1.0), ParamValue::Categorical("rmsprop".into()));
    assert_eq!(opt.to_internal(&ParamValue::Categorical("lion".into())), None);
}

#[test]
fn serde_validates() {
    let json_ok = Distribution::Int {
        low: 16,
        high: 512,
        log: true,
        step: 1,
    };
    let raw: RawDistribution = json_ok.clone().into();
    let back = Distribution::try_from(raw).unwrap();
    assert_eq!(back, json_ok);
    let bad = RawDistribution::Float {
        low: 2.0,
        high: 1.0,
        log: false,
        step: None,
    };
    assert!(Distribution::try_from(bad).is_err());
}

fn arb_choice() -> impl Strategy<Value = Choice> {
    prop_oneof![
        any::<bool>().prop_map(Choice::Bool),
        any::<i64>().prop_map(Choice::Int),
        (-1e6f64..1e6).prop_map(Choice::Float),
        "[a-z][a-z0-9_]{0,6}".prop_map(Choice::Str),
        "[ -~]{0,8}".prop_map(Choice::Str),
    ]
}

fn arb_distribution() -> impl Strategy<Value = Distribution> {
    prop_oneof![
        (-1e6f64..1e6, 1e-6f64..1e6, any::<bool>()).prop_map(|(low, w, log)| if log {
            Distribution::Float {
                low: w,
                high: w * 7.5,
                log,
                step: None,
            }
        } else {
            Distribution::Float {
                low,
                high: low + w,
                log,
                step: None,
            }
        }),
        (-1000i64..1000, 1i64..50, 1i64..20).prop_map(|(low, k, step)| Distribution::Int {
            low,
            high: low + k * step,
            log: false,
            step
        }),
        (1i64..1000, 1i64..1000).prop_map(|(low, w)| Distribution::Int {
            low,
            high: low + w,
            log: true,
            step: 1
        }),
        proptest::collection::vec(arb_choice(), 1..6).prop_map(|mut choices| {
            let mut unique: Vec<Choice> = Vec::new();
            choices.retain(|c| {
                let new = !unique.contains(c);
                unique.push(c.clone());
                new
            });
            Distribution::Categorical { choices }
        }),
    ]
}

proptest! {
    #[test]
    fn print_parse_round_trip(d in arb_distribution()) {
        prop_assert!(d.validate().is_ok());
        let text = d.to_string();
        prop_assert_eq!(Distribution::parse(&text).map_err(|e| e.to_string()), Ok(d));
    }

    #[test]
    fn internal_round_trip(d in arb_distribution(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let v = d.sample_uniform(&mut rng);
        prop_assert!(d.contains(&v), "{v:?} outside {d}");
        let t = d.to_internal(&v).unwrap();
        let back = d.from_internal(t);
        match (&v, &back) {
            (ParamValue::Float(a), ParamValue::Float(b)) => prop_assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0)),
            _ => prop_assert_eq!(&v, &back),
        }
        let u = d.to_unit(&v).unwrap();
        prop_assert!((0.0..=1.0).contains(&u));
        prop_assert!(d.contains(&d.from_unit(u)));
    }

    #[test]
    fn parser_never_panics(s in "[ -~]{0,30}") {
        let _ = Distribution::parse(&s);
    }
}
