"""moto_server, with one addition for the tests: a KMS key created with the tag
`_custom_id_` gets that value as its key id (moto honors the tag for other services, not
yet for KMS). The behaviour suite and the organization tests use it to hold one key, by the
same ARN, in moto and in a local-backend sidecar whose AWS-protocol door serves Inspector to
an aws-backend one.

Usage: moto_server.py [moto_server arguments]
"""

import sys

import moto.kms.models as kms_models
from moto.server import main

_create_key = kms_models.KmsBackend.create_key


def create_key(self, policy, key_usage, key_spec, description, tags, *args, **kwargs):
    custom = next((t.get("TagValue") for t in tags or [] if t.get("TagKey") == "_custom_id_"), None)
    if not custom:
        return _create_key(self, policy, key_usage, key_spec, description, tags, *args, **kwargs)
    generate = kms_models.generate_key_id
    kms_models.generate_key_id = lambda multi_region=False: custom
    try:
        return _create_key(self, policy, key_usage, key_spec, description, tags, *args, **kwargs)
    finally:
        kms_models.generate_key_id = generate


kms_models.KmsBackend.create_key = create_key

if __name__ == "__main__":
    sys.exit(main())
