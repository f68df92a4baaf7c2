// The real openai-node client against seamline: each scenario prints one JSON line of
// what the client saw. Usage: node clients.mjs SCENARIO BASE_URL
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const [scenario, baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "client-key", maxRetries: 0, timeout: 10000 });

async function responsesStream() {
  const stream = await client.responses.create({ model: "m", input: "hi", stream: true });
  const types = [];
  let text = "";
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed" || event.type === "response.failed") final = event.response;
  }
  return { types, text, status: final && final.status, output_text: final && final.output_text, usage: final && final.usage };
}

async function responsesHelper() {
  const stream = client.responses.stream({ model: "m", input: "hi" });
  const deltas = [];
  stream.on("response.output_text.delta", (e) => deltas.push(e.delta));
  const final = await stream.finalResponse();
  return { deltas, output_text: final.output_text, status: final.status };
}

async function responsesWhole() {
  const resp = await client.responses.create({ model: "m", input: "hi" });
  return { output_text: resp.output_text, status: resp.status, id: resp.id };
}

async function chatStream() {
  const stream = await client.chat.completions.create({
    model: "m", messages: [{ role: "user", content: "hi" }], stream: true,
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  return { text };
}

// @anthropic-ai/sdk against the Messages front: its baseURL is the server's root.
const claude = new Anthropic({
  baseURL: baseURL.replace(/\/v1$/, ""), apiKey: "client-key", maxRetries: 0, timeout: 10000,
});

async function messagesStream() {
  const stream = claude.messages.stream({
    model: "m", max_tokens: 64, messages: [{ role: "user", content: "hi" }],
  });
  const types = [];
  stream.on("streamEvent", (e) => types.push(e.type));
  const final = await stream.finalMessage();
  return { types, text: final.content.map((b) => b.text ?? "").join(""), stop_reason: final.stop_reason, usage: final.usage };
}

async function messagesWhole() {
  const msg = await claude.messages.create({
    model: "m", max_tokens: 64, messages: [{ role: "user", content: "hi" }],
  });
  return { text: msg.content[0].text, stop_reason: msg.stop_reason };
}

const scenarios = {
  responsesStream, responsesHelper, responsesWhole, chatStream, messagesStream, messagesWhole,
};
try {
  console.log(JSON.stringify({ ok: await scenarios[scenario]() }));
} catch (err) {
  console.log(JSON.stringify({ error: {
    name: err.constructor.name, status: err.status ?? null, message: String(err.message),
    type: err.error?.error?.type ?? null,
  } }));
}
