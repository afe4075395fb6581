"""Every spelling of a credential the one detector (``regpatch.sanitize``) must find, and the look-alikes
it must leave alone: the table the unit tests run against both uses (refused and redacted) and the
end-to-end test of the command line, Prefect's database and the state folder reuses."""

from __future__ import annotations

# (text, the secret in it): each one refused before a Prefect run and redacted everywhere
LITERAL = [
    ("curl -u alice:{s} https://reg/v2/", "{s}"),
    ("curl -ualice:{s} https://reg/v2/", "{s}"),
    ("curl -u=alice:{s} https://reg/v2/", "{s}"),
    ("curl --user alice:{s} https://reg/v2/", "{s}"),
    ("curl --user=alice:{s} https://reg/v2/", "{s}"),
    ("skopeo inspect --creds alice:{s} docker://x", "{s}"),
    ("skopeo inspect --creds=alice:{s} docker://x", "{s}"),
    ("skopeo inspect --creds 'alice:{s}' docker://x", "{s}"),
    ('skopeo inspect --creds "alice:{s}" docker://x', "{s}"),
    ("skopeo copy --src-creds alice:{s} docker://x dir:/tmp/x", "{s}"),
    ("skopeo copy --src-creds=alice:{s} docker://x dir:/tmp/x", "{s}"),
    ("skopeo copy --dest-creds alice:{s} dir:/tmp/x docker://x", "{s}"),
    ("skopeo copy --dest-creds=alice:{s} dir:/tmp/x docker://x", "{s}"),
    ("docker login -p {s} reg", "{s}"),
    ("docker login -p{s} reg", "{s}"),
    ("docker login -p={s} reg", "{s}"),
    ("docker login --password {s} reg", "{s}"),
    ("docker login --password={s} reg", "{s}"),
    ("podman login --password '{s} and more' reg", "{s} and more"),
    ("crane pull --registry-token {s} x /tmp/x", "{s}"),
    ("crane pull --registry-token={s} x /tmp/x", "{s}"),
    ("tool --token {s} x", "{s}"),
    ("tool --token={s} x", "{s}"),
    ("tool --identity-token {s} x", "{s}"),
    ("curl https://alice:{s}@reg/v2/", "{s}"),
    ("skopeo inspect docker://alice:{s}@reg/app:1", "{s}"),
    ("REGISTRY_PASSWORD={s} ./pull.sh", "{s}"),
    ("env MY_TOKEN='{s}' pull", "{s}"),
    ("API_SECRET={s} pull", "{s}"),
    ("export reg_passwd={s}; pull", "{s}"),
    ("curl -H 'Authorization: Bearer {s}' https://reg/v2/", "{s}"),
    ('curl --header "authorization: Basic {s}" https://reg/v2/', "{s}"),
]

# references to a secret ($VAR, ${VAR}, %VAR%, $(...)) and look-alikes: neither refused nor changed
NOT_SECRETS = [
    "skopeo inspect --creds alice:$PW docker://x",
    "skopeo inspect --creds alice:${PW} docker://x",
    'skopeo inspect --creds "$REG_USER:$REG_PASS" docker://x',
    "skopeo inspect --creds $CREDS docker://x",
    "docker login -p $PW reg",
    "docker login -p %PW% reg",
    "docker login --password=${PW} reg",
    'docker login -p "$(cat /run/secrets/pw)" reg',
    "REGISTRY_PASSWORD=$PW ./pull.sh",
    "MY_TOKEN=%TOKEN% pull",
    "curl https://alice:$PW@reg/v2/",
    'curl -H "Authorization: Bearer $TOKEN" https://reg/v2/',
    "docker login --password-stdin reg",
    "curl -u alice https://reg/v2/",
    "skopeo inspect --creds alice docker://x",
    "mkdir -p /var/run/registry && systemctl restart docker-registry",
    "docker run -d -p 5000:5000 -u 1000:1000 registry:2",
    "REGISTRY_PASSWORD_FILE=/run/secrets/pw ./pull.sh",
    "Credentials(username='alice', identity_token=True)",
    "skopeo inspect --tls-verify=false docker://x",
    "openssl pkey -in key.pem -pubout -passin env:PASS",
    "find /var/lib/registry -name '*.tmp' -print",
    "curl https://reg.example:5000/v2/",
]


def literal_cases() -> list[tuple[str, str]]:
    """(text, secret) with a secret of its own in each (so that no case passes by another's)."""
    out = []
    for i, (text, secret) in enumerate(LITERAL):
        s = f"Pw{i:02d}-x7Q"
        out.append((text.replace("{s}", s), secret.replace("{s}", s)))
    return out
