// The differential test's oracle (tests/differential.rs): decides KMS requests with the npm
// package @cloud-copilot/iam-simulate, an IAM simulator written independently of
// inspector-keyd. Reads one batch as JSON on stdin:
//   {"cases": [{"key_policy": {...}, "identity_policies": [{...}], "resource_account": "...",
//               "requests": [{"principal": "...", "action": "...", "resource": "...",
//                             "context": {"key": "value" | ["values"]}}]}]}
// and writes one decision per request, per case, as JSON on stdout:
//   [["Allowed" | "ExplicitlyDenied" | "ImplicitlyDenied" | "Error: <why>", ...], ...]
// One process decides a whole batch. The package is installed (pinned) by
// scripts/install-test-tools.sh; ORACLE_PACKAGE may point at it elsewhere. A request with
// "identity": false is a service principal's, which the principal's identity policies do not
// govern; one with "identity": "other" is another IAM principal's, decided with the case's
// "other_identity_policies" instead of "identity_policies".
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import path from 'node:path'

const here = path.dirname(new URL(import.meta.url).pathname)
const packageDir =
  process.env.ORACLE_PACKAGE ??
  path.join(here, '../../.tools/node/node_modules/@cloud-copilot/iam-simulate')
const load = (relative) => import(pathToFileURL(path.join(packageDir, relative)).href)
// The package's own engine, called the way its runUnsafeSimulation does (which takes the
// request context as given), with every policy named. Its runSimulation validates the
// context first and drops the keys it does not expect for the action, kms:EncryptionContext:
// <key> among them (its check knows `/`-separated key families such as aws:PrincipalTag/,
// not `:`-separated ones), which would hide the encryption context the data-key requests
// carry; its runUnsafeSimulation loads the resource policy without a name and fails.
const { authorize } = await load('dist/esm/core_engine/CoreSimulatorEngine.js')
const { AwsRequestImpl } = await load('dist/esm/request/request.js')
const { RequestContextImpl } = await load('dist/esm/requestContext.js')
const { DiscoveryContextKeyConstraints } = await load(
  'dist/esm/context_keys/discoveryContextKeyConstraints.js'
)
const { loadPolicy } = await import(
  pathToFileURL(path.join(packageDir, '../iam-policy/dist/esm/index.js')).href
)

const batch = JSON.parse(readFileSync(0, 'utf8'))
const decisions = []
for (const c of batch.cases) {
  const keyPolicy = loadPolicy(c.key_policy, { name: 'key_policy' })
  const identityPolicies = c.identity_policies.map((policy, i) =>
    loadPolicy(policy, { name: `identity_policies[${i}]` })
  )
  const otherIdentityPolicies = (c.other_identity_policies ?? []).map((policy, i) =>
    loadPolicy(policy, { name: `other_identity_policies[${i}]` })
  )
  const answers = []
  for (const r of c.requests) {
    try {
      const request = new AwsRequestImpl(
        r.principal,
        { resource: r.resource, accountId: c.resource_account },
        r.action,
        new RequestContextImpl(r.context)
      )
      const analysis = authorize({
        request,
        sessionPolicy: undefined,
        identityPolicies:
          r.identity === false
            ? []
            : r.identity === 'other'
              ? otherIdentityPolicies
              : identityPolicies,
        serviceControlPolicies: [],
        resourceControlPolicies: [],
        resourcePolicy: keyPolicy,
        permissionBoundaries: undefined,
        vpcEndpointPolicies: undefined,
        simulationParameters: {
          simulationMode: 'Strict',
          discoveryContextKeyConstraints: new DiscoveryContextKeyConstraints([])
        },
        serviceSettings: {}
      })
      answers.push(analysis.result)
    } catch (e) {
      answers.push('Error: ' + e.message)
    }
  }
  decisions.push(answers)
}
process.stdout.write(JSON.stringify(decisions))
