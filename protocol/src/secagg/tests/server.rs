//! The aggregator's side under hostile or malformed input: keys, shares, inputs,
//! reveals and steps out of order.

use super::*;

#[test]
fn the_server_checks_keys_and_shares() {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let mut server = ServerRound::new(context(), 3, 2, CLIP, 4, 10).unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        if i == 0 {
            let err = server.add_keys(3, keys.clone()).unwrap_err();
            assert_eq!(err, SecAggError::IndexOutOfRange { index: 3, cohort: 3 });
            let weak = PublicKeys {
                cipher: [0; 32],
                mask: keys.mask,
            };
            assert_eq!(server.add_keys(0, weak).unwrap_err(), SecAggError::WeakKey { index: 0 });
        }
        server.add_keys(i, keys.clone()).unwrap();
        if i == 0 {
            assert!(matches!(
                server.add_keys(0, keys),
                Err(SecAggError::Duplicate { index: 0, .. })
            ));
        }
        clients.push(client);
    }
    assert!(matches!(
        server.add_shares(0, vec![]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    let roster = server.roster().unwrap();
    let (_, late) = ClientRound::new(context(), server.params_for(2), &mut rng).unwrap();
    assert!(matches!(server.add_keys(2, late), Err(SecAggError::OutOfOrder { .. })));

    let shares = clients[0].share_keys(&roster, &mut rng).unwrap();
    let err = server.add_shares(0, shares[..1].to_vec()).unwrap_err();
    assert_eq!(
        err,
        SecAggError::ShareCount {
            index: 0,
            got: 1,
            expected: 2
        }
    );
    assert!(err.to_string().contains("sent 1 encrypted shares, expected 2"), "{err}");
    let mut forged = shares.clone();
    forged[1].from = 1;
    assert_eq!(
        server.add_shares(0, forged).unwrap_err(),
        SecAggError::WrongSender { index: 0, from: 1 }
    );
    let mut twice = shares.clone();
    twice[1].to = twice[0].to;
    assert!(matches!(
        server.add_shares(0, twice),
        Err(SecAggError::Duplicate { .. })
    ));
    let mut to_self = shares.clone();
    to_self[0].to = 0;
    assert!(matches!(
        server.add_shares(0, to_self),
        Err(SecAggError::NotMember { index: 0, .. })
    ));
    let mut short = shares.clone();
    short[0].ciphertext.truncate(10);
    assert!(matches!(
        server.add_shares(0, short),
        Err(SecAggError::CiphertextLength { got: 10, .. })
    ));
    server.add_shares(0, shares.clone()).unwrap();
    assert!(matches!(
        server.add_shares(0, shares),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    assert!(
        server.shares_for(1).is_empty(),
        "nothing is forwarded before U2 is closed"
    );
}

#[test]
fn the_server_checks_masked_inputs() {
    let mut h = Harness::new(18, 5, 3);
    let u2 = h.share(&[4]);
    let masked = |h: &mut Harness, i: usize| {
        let shares = h.server.shares_for(i as u32);
        h.clients[i].receive_shares(&shares).unwrap();
        h.clients[i].mask(&h.updates[i], h.weights[i]).unwrap()
    };
    let input = masked(&mut h, 0);
    let err = h.server.add_masked(0, &input[1..], 1).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongLength {
            index: 0,
            got: NUMEL - 1,
            expected: NUMEL
        }
    );
    assert_eq!(
        h.server.add_masked(4, &input, 1).unwrap_err().to_string(),
        "agent 4 is not a member of U2 (agents that sent shares)"
    );
    assert_eq!(h.server.add_masked(0, &input, 0).unwrap_err(), SecAggError::ZeroWeight);
    let err = h.server.add_masked(0, &input, MAX_WEIGHT * 5 + 1).unwrap_err();
    assert!(matches!(err, SecAggError::WeightOverBound { index: 0, .. }), "{err}");
    h.server.add_masked(0, &input, h.weights[0]).unwrap();
    assert!(matches!(
        h.server.add_masked(0, &input, h.weights[0]),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    // The refused inputs left the sum alone: the round still unmasks exactly.
    for &i in &u2[1..] {
        let input = masked(&mut h, i as usize);
        h.server.add_masked(i, &input, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    h.reveal(&u3, &[]);
    h.finish_and_check(&[0, 1, 2, 3], &[4]);
}

#[test]
fn the_server_refuses_reveals_out_of_place() {
    let (mut h, u2) = ready(19);
    for &i in &u2[..4] {
        let masked = h.clients[i as usize]
            .mask(&h.updates[i as usize], h.weights[i as usize])
            .unwrap();
        h.server.add_masked(i, &masked, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    assert_eq!(u3, [0, 1, 2, 3]);
    let honest = h.clients[0].reveal(&u3).unwrap();

    // Both kinds for agent 1 (in U3): its mask key would unmask its input.
    let mut both = honest.clone();
    let share = both[1].share().clone();
    both[1] = Reveal::MaskKey { of: 1, share };
    let err = h.server.add_reveal(0, both).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongRevealKind {
            from: 0,
            of: 1,
            got: "mask-key",
            expected: "self-mask"
        }
    );
    // A self-mask share of agent 4, which dropped: with its mask key, that unmasks nothing
    // today, but the server must never hold both.
    let mut wrong_kind = honest.clone();
    let share = wrong_kind[4].share().clone();
    wrong_kind[4] = Reveal::SelfMask { of: 4, share };
    assert!(matches!(
        h.server.add_reveal(0, wrong_kind),
        Err(SecAggError::WrongRevealKind { of: 4, .. })
    ));

    let mut wrong_x = honest.clone();
    wrong_x[2] = Reveal::SelfMask {
        of: 2,
        share: Share { x: 2, y: [0; 32] },
    };
    let err = h.server.add_reveal(0, wrong_x).unwrap_err();
    assert_eq!(
        err,
        SecAggError::WrongShareX {
            from: 0,
            of: 2,
            x: 2,
            expected: 1
        }
    );

    let mut duplicated = honest.clone();
    duplicated[3] = duplicated[2].clone();
    assert!(matches!(
        h.server.add_reveal(0, duplicated),
        Err(SecAggError::Duplicate { index: 2, .. })
    ));
    let err = h.server.add_reveal(0, honest[..4].to_vec()).unwrap_err();
    assert_eq!(err, SecAggError::IncompleteReveal { from: 0, missing: 4 });
    let reveals_of_4 = h.clients[4].reveal(&u3);
    assert!(
        matches!(reveals_of_4, Err(SecAggError::OutOfOrder { .. })),
        "agent 4 never masked"
    );
    assert!(matches!(
        h.server.add_reveal(4, honest.clone()),
        Err(SecAggError::NotMember { index: 4, .. })
    ));

    // Every refusal left the state alone.
    h.server.add_reveal(0, honest.clone()).unwrap();
    assert!(matches!(
        h.server.add_reveal(0, honest),
        Err(SecAggError::Duplicate { index: 0, .. })
    ));
    h.reveal(&u3, &[0]);
    h.finish_and_check(&[0, 1, 2, 3], &[4]);
}

#[test]
fn corrupted_shares_of_a_mask_key_are_detected() {
    let (mut h, u2) = ready(20);
    for &i in &u2[..4] {
        let masked = h.clients[i as usize]
            .mask(&h.updates[i as usize], h.weights[i as usize])
            .unwrap();
        h.server.add_masked(i, &masked, h.weights[i as usize]).unwrap();
    }
    let u3 = h.server.close_inputs().unwrap();
    for &i in &u3 {
        let mut reveals = h.clients[i as usize].reveal(&u3).unwrap();
        if let Reveal::MaskKey { share, .. } = &mut reveals[4] {
            share.y[0] ^= 0x80;
        }
        h.server.add_reveal(i, reveals).unwrap();
    }
    assert_eq!(h.server.finish().unwrap_err(), SecAggError::KeyMismatch { index: 4 });
}

#[test]
fn steps_out_of_order_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let mut server = ServerRound::new(context(), 3, 2, CLIP, 4, 10).unwrap();
    let (mut client, _) = ClientRound::new(context(), server.params_for(0), &mut rng).unwrap();
    let err = client.mask(&[0.0; 4], 1).unwrap_err();
    assert_eq!(
        err,
        SecAggError::OutOfOrder {
            call: "mask",
            phase: "share keys"
        }
    );
    assert!(matches!(
        client.receive_shares(&[]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(matches!(client.reveal(&[0, 1]), Err(SecAggError::OutOfOrder { .. })));
    assert!(matches!(server.close_shares(), Err(SecAggError::OutOfOrder { .. })));
    assert!(matches!(
        server.add_masked(0, &[0; 4], 1),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(matches!(
        server.add_reveal(0, vec![]),
        Err(SecAggError::OutOfOrder { .. })
    ));
    assert!(!server.can_finish());
    let err = server.finish().unwrap_err();
    assert_eq!(
        err.to_string(),
        "finish is not possible now: the round is at the public keys step"
    );
}
