// A second, independent client of the LLM fake: the official Node `openai` SDK.
// Run by test_fake_llm.py with FAKE_URL (the fake), FAKE_BASE_URL (with /v1), FAKE_KEY;
// prints what it saw as JSON. Faults are scripted through the fake's control API.
"use strict";
const OpenAI = require("openai");

const MODEL = "gpt-4o-mini";
const USER = [{ role: "user", content: "Hello, world! How are you?" }];

async function control(what, body) {
  const answer = await fetch(`${process.env.FAKE_URL}/_fake/${what}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!answer.ok) throw new Error(`control ${what}: ${answer.status}`);
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
  const options = { baseURL: process.env.FAKE_BASE_URL, apiKey: process.env.FAKE_KEY };
  const client = new OpenAI({ ...options, maxRetries: 0 });
  const seen = {};

  const chat = await client.chat.completions.create({ model: MODEL, messages: USER });
  const usage = chat.usage;
  seen.chat = {
    content: chat.choices[0].message.content,
    finish_reason: chat.choices[0].finish_reason,
    usage: [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens],
  };

  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: USER,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let streamUsage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content || "";
    if (chunk.usage) streamUsage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens];
  }
  seen.stream = { content: text, usage: streamUsage };

  const runner = client.chat.completions.stream({
    model: MODEL,
    messages: USER,
    tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
  });
  const final = await runner.finalChatCompletion();
  const call = final.choices[0].message.tool_calls[0];
  seen.tool = {
    name: call.function.name,
    arguments: JSON.parse(call.function.arguments),
    finish: final.choices[0].finish_reason,
  };

  // No encoding_format: the SDK asks for base64 and decodes it.
  const vectors = await client.embeddings.create({ model: "text-embedding-3-small", input: "hi" });
  seen.embedding = [vectors.data[0].embedding.length, vectors.data[0].embedding[0]];

  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  seen.models = models;

  const errors = {};
  await control("faults", { fault: { kind: "status", status: 429, retry_after: 0.2 } });
  let error = await caught(client.chat.completions.create({ model: MODEL, messages: USER }));
  errors["429"] = [error.constructor.name, error.headers.get("retry-after")];
  await control("faults", { fault: { kind: "status", status: 500 } });
  error = await caught(client.chat.completions.create({ model: MODEL, messages: USER }));
  errors["500"] = [error.constructor.name, error.status];
  const stranger = new OpenAI({ ...options, apiKey: "sk-not-the-key", maxRetries: 0 });
  error = await caught(stranger.models.list());
  errors["401"] = [error.constructor.name, error.code];
  error = await caught(client.models.retrieve("gpt-0"));
  errors["404"] = [error.constructor.name, error.code];
  await control("faults", { fault: { kind: "hang" } });
  error = await caught(
    client.chat.completions.create({ model: MODEL, messages: USER }, { timeout: 300 }),
  );
  errors.hang = error.constructor.name;
  await control("faults", { fault: { kind: "cut", after_chunks: 2 } });
  error = await caught(
    (async () => {
      const cut = await client.chat.completions.create({ model: MODEL, messages: USER, stream: true });
      for await (const _ of cut);
    })(),
  );
  errors.cut = [error.constructor.name, error.message];
  seen.errors = errors;

  // Retried after the fake's retry-after-ms.
  await control("faults", { fault: { kind: "status", status: 429, retry_after: 0.2 } });
  const patient = new OpenAI({ ...options, maxRetries: 1 });
  const retriedAnswer = await patient.chat.completions.create({ model: MODEL, messages: USER });
  const log = await (await fetch(`${process.env.FAKE_URL}/_fake/requests`)).json();
  seen.retried = log.slice(-2).map((r) => r.status);
  if (!retriedAnswer.choices.length) throw new Error("no answer after the retry");

  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
