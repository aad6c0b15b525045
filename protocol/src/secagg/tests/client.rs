//! An agent's side under hostile or malformed input: what it reveals, masks and checks.

use super::*;

#[test]
fn a_client_never_reveals_both_secrets_of_one_agent() {
    let (mut h, _) = ready(12);
    h.clients[0].mask(&h.updates[0], 1).unwrap();
    let reveals = h.clients[0].reveal(&[0, 1, 3, 4]).unwrap();
    assert_eq!(reveals.len(), 5);
    for reveal in &reveals {
        assert_eq!(reveal.share().x, 1, "agent 0's shares sit at x = 1");
        match reveal {
            Reveal::MaskKey { of, .. } => assert_eq!(*of, 2, "only the omitted agent's mask key"),
            Reveal::SelfMask { of, .. } => assert_ne!(*of, 2),
        }
    }
    // Asked again for the same survivors (a retransmission): the same answer.
    assert_eq!(h.clients[0].reveal(&[4, 3, 1, 0]).unwrap(), reveals);
    // Asked for other survivors, which would hand out agent 2's self-mask share too: refused.
    assert_eq!(
        h.clients[0].reveal(&[0, 1, 2, 3, 4]).unwrap_err(),
        SecAggError::AlreadyRevealed
    );
}

#[test]
fn a_client_masks_once_and_checks_its_input() {
    let (mut h, _) = ready(13);
    let mut update = h.updates[0].clone();
    assert_eq!(h.clients[0].mask(&update, 0).unwrap_err(), SecAggError::ZeroWeight);
    update[17] = f32::NAN;
    let err = h.clients[0].mask(&update, 1).unwrap_err();
    assert!(matches!(err, SecAggError::NonFinite { position: 17, .. }), "{err}");
    assert!(matches!(
        h.clients[0].mask(&h.updates[0], u64::MAX),
        Err(SecAggError::WeightTooLarge { .. })
    ));
    // Refusals do not use up the one masked input; the round's whole weight budget fits.
    h.clients[0].mask(&h.updates[0], MAX_WEIGHT * 5).unwrap();
    assert_eq!(
        h.clients[0].mask(&h.updates[0], 1).unwrap_err(),
        SecAggError::AlreadyMasked
    );
}

#[test]
fn a_client_refuses_survivors_outside_u2_or_without_itself() {
    let mut h = Harness::new(14, 5, 3);
    let u2 = h.share(&[4]);
    for &i in &u2 {
        let shares = h.server.shares_for(i);
        h.clients[i as usize].receive_shares(&shares).unwrap();
    }
    h.clients[0].mask(&h.updates[0], 1).unwrap();
    let err = h.clients[0].reveal(&[0, 1, 4]).unwrap_err();
    assert_eq!(
        err,
        SecAggError::NotMember {
            index: 4,
            set: "U2 as this agent saw it"
        }
    );
    let err = h.clients[0].reveal(&[1, 2, 3]).unwrap_err();
    assert_eq!(
        err,
        SecAggError::NotMember {
            index: 0,
            set: "the survivors (U3)"
        }
    );
    let err = h.clients[0].reveal(&[0, 1, 1, 2]).unwrap_err();
    assert!(matches!(err, SecAggError::Duplicate { index: 1, .. }), "{err}");
    // None of these counted as the one reveal.
    assert_eq!(h.clients[0].reveal(&[0, 1, 2]).unwrap().len(), 4);
}

#[test]
fn a_client_checks_the_roster() {
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let server = ServerRound::new(context(), 4, 3, CLIP, 4, 10).unwrap();
    let mut roster = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (client, keys) = ClientRound::new(context(), server.params_for(i), &mut rng).unwrap();
        roster.push(PeerKeys { index: i, keys });
        clients.push(client);
    }
    let client = &mut clients[0];
    let err = client.share_keys(&roster[1..], &mut rng).unwrap_err();
    assert_eq!(err, SecAggError::NotInRoster { index: 0 });
    assert!(err.to_string().contains("agent 0"), "{err}");
    let mut swapped = roster.clone();
    swapped[0].keys = roster[1].keys.clone();
    assert_eq!(
        client.share_keys(&swapped, &mut rng).unwrap_err(),
        SecAggError::NotInRoster { index: 0 }
    );
    let mut duplicated = roster.clone();
    duplicated.push(roster[2].clone());
    let err = client.share_keys(&duplicated, &mut rng).unwrap_err();
    assert_eq!(
        err,
        SecAggError::Duplicate {
            index: 2,
            list: "the roster"
        }
    );
    let mut outside = roster.clone();
    outside[3].index = 9;
    let err = client.share_keys(&outside, &mut rng).unwrap_err();
    assert_eq!(err, SecAggError::IndexOutOfRange { index: 9, cohort: 4 });
    let mut weak = roster.clone();
    weak[2].keys.cipher = [0; 32];
    assert_eq!(
        client.share_keys(&weak, &mut rng).unwrap_err(),
        SecAggError::WeakKey { index: 2 }
    );
    let err = client.share_keys(&roster[..2], &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );
    // After all those refusals the real roster still works, once.
    assert_eq!(client.share_keys(&roster, &mut rng).unwrap().len(), 3);
    assert!(matches!(
        client.share_keys(&roster, &mut rng),
        Err(SecAggError::OutOfOrder { .. })
    ));
}

#[test]
fn a_client_checks_the_shares_it_receives() {
    let mut h = Harness::new(16, 5, 3);
    let u2 = h.share(&[]);
    let mine = h.server.shares_for(0);
    assert_eq!(mine.len(), 4);
    assert!(mine.iter().all(|s| s.to == 0 && s.from != 0));
    let client = &mut h.clients[0];

    let theirs = h.server.shares_for(1);
    let err = client.receive_shares(&theirs).unwrap_err();
    assert!(
        matches!(err, SecAggError::WrongRecipient { to: 1, expected: 0, .. }),
        "{err}"
    );

    let mut tampered = mine.clone();
    tampered[2].ciphertext[5] ^= 1;
    let from = tampered[2].from;
    assert_eq!(
        client.receive_shares(&tampered).unwrap_err(),
        SecAggError::Decryption { from, to: 0 }
    );

    // A share relabelled as coming from another sender no longer authenticates.
    let mut relabelled = mine.clone();
    relabelled[0].from = relabelled[1].from;
    relabelled.swap_remove(1);
    assert!(matches!(
        client.receive_shares(&relabelled),
        Err(SecAggError::Decryption { .. })
    ));

    let mut truncated = mine.clone();
    truncated[0].ciphertext.pop();
    assert!(matches!(
        client.receive_shares(&truncated),
        Err(SecAggError::CiphertextLength { .. })
    ));

    let mut duplicated = mine.clone();
    duplicated.push(mine[1].clone());
    assert!(matches!(
        client.receive_shares(&duplicated),
        Err(SecAggError::Duplicate { .. })
    ));

    let mut stranger = mine.clone();
    stranger[0].from = 0;
    assert!(matches!(
        client.receive_shares(&stranger),
        Err(SecAggError::NotMember { index: 0, .. })
    ));

    let err = client.receive_shares(&mine[..1]).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFew {
                have: 2,
                threshold: 3,
                ..
            }
        ),
        "{err}"
    );

    // Nothing above changed the state: the genuine shares are accepted.
    client.receive_shares(&mine).unwrap();
    assert_eq!(u2.len(), 5);
}
