// A second, independent client of the payments fake: the official Node `stripe` SDK.
// Run by test_fake_payments.py with FAKE_URL, FAKE_KEY and one webhook the fake delivered
// (WEBHOOK_BODY, WEBHOOK_SIGNATURE, WEBHOOK_SECRET); prints what it saw as JSON.
"use strict";
const Stripe = require("stripe");

function client(key) {
  const url = new URL(process.env.FAKE_URL);
  return new Stripe(key, {
    host: url.hostname,
    port: Number(url.port),
    protocol: "http",
    maxNetworkRetries: 0,
  });
}

async function caught(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("no error");
}

async function main() {
  const stripe = client(process.env.FAKE_KEY);
  const seen = {};
  const customer = await stripe.customers.create({ metadata: { plan: "team" } });
  seen.customer = [customer.object, customer.metadata];
  const params = { amount: 1234, currency: "usd", payment_method: "pm_card_visa", confirm: true };
  const intent = await stripe.paymentIntents.create(params, { idempotencyKey: "node-1" });
  seen.intent = [intent.status, intent.amount_received];
  const again = await stripe.paymentIntents.create(params, { idempotencyKey: "node-1" });
  seen.replayed = again.id === intent.id;

  const declined = await caught(
    stripe.paymentIntents.create({ ...params, payment_method: "pm_card_chargeDeclined" }),
  );
  const idempotency = await caught(
    stripe.paymentIntents.create({ ...params, amount: 999 }, { idempotencyKey: "node-1" }),
  );
  const missing = await caught(stripe.customers.retrieve("cus_missing"));
  const auth = await caught(client("sk_test_wrong").customers.list());
  seen.errors = {
    declined: [declined.type, declined.code, declined.decline_code],
    idempotency: idempotency.type,
    missing: [missing.type, missing.code],
    auth: auth.type,
  };

  const body = process.env.WEBHOOK_BODY;
  const event = stripe.webhooks.constructEvent(
    body,
    process.env.WEBHOOK_SIGNATURE,
    process.env.WEBHOOK_SECRET,
  );
  seen.webhook = [event.type, event.data.object.email];
  const tampered = await caught(
    (async () =>
      stripe.webhooks.constructEvent(
        body.replace("node@example.com", "evil@example.com"),
        process.env.WEBHOOK_SIGNATURE,
        process.env.WEBHOOK_SECRET,
      ))(),
  );
  seen.tampered = tampered.type;
  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
