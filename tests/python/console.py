"""Drives the web console in headless Chromium (Debian's chromium + chromium-driver) through
WebDriver, as a person would: sign in, create a graph, add nodes and an edge, roll the version
slider back, find neighbours and a path (highlighted in the drawing), see a problem; rename and
archive a graph; upload documents with a progress bar, list, version and download them, tag
them, restore an earlier version, link one, take one through review, archive and restore, and
(as an admin) set its retention and legal hold; add a workflow definition, start
instances, approve and reject their approval step, pause, signal, resume and cancel one,
assign and complete a manual step; see
agents by state and their tasks, deploy one and move it through its lifecycle, configure an
AI agent (model, prompt, tools; permissions as an admin); watch another
writer's node appear in the open graph and in the live events feed without reloading, filtered
by aggregate; sign out and be refused; a second tenant
sees nothing of the first; a session the gateway no longer knows (what an expired one is) is sent
to sign in; an admin of tenant A is neither offered nor shown the operations page (it counts
every tenant's traffic), an operator (admin of the operator tenant) reads it.

Run by crates/gateway/tests/console.rs, which starts the gateway and the graph service and
passes their address and two tenants' tokens. Prints one line per check; exits non-zero on the
first failure, after saving a screenshot of it.

usage: console.py URL TOKEN_A TOKEN_B SCREENSHOT_DIR ADMIN_TOKEN_A OPERATOR_TOKEN
"""

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

URL, TOKEN_A, TOKEN_B, SHOTS, ADMIN_A, OPERATOR = sys.argv[1:7]
WAIT = 15


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CIM_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is named: Selenium Manager would otherwise try to download one.
    service = Service(executable_path=os.environ.get("CIM_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(1280, 800)
    return driver


driver = browser()
# Pages are rebuilt as they load: an element read a moment ago may be gone, so look again.
wait = WebDriverWait(driver, WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def check(what, ok):
    if not ok:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def shot(name, width=1280, height=800, show=None):
    """A screenshot of the page's top (or with the element `show` in view) at exactly width x
    height CSS pixels (the browser's own window chrome would otherwise take some of the height)."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.execute_script("window.scrollTo(0, 0)")
    if show:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'end'})", show)
    time.sleep(0.3)
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def el(css):
    return wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def visible(css):
    return wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def text_in(css, text):
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def count(css):
    return len(driver.find_elements(By.CSS_SELECTOR, css))


def heading(text):
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text == text)


def fill(css, value):
    field = visible(css)
    field.clear()
    field.send_keys(value)


def sign_in(token, lands_on="Graphs"):
    heading("Sign in")
    fill("#signin-secret", token)
    driver.find_element(By.CSS_SELECTOR, "#signin-form [type=submit]").click()
    heading(lands_on)


def api_status(method, path):
    """The status the gateway answers this page's own fetch (with whatever cookie it holds)."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[1], {method: arguments[0], credentials: 'same-origin'})"
        ".then(r => done(r.status), e => done(String(e)));",
        method, path)


def rest(method, path, body=None):
    """Another writer: tenant A's token calling the REST API directly, not through the page."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method, headers={
        "Authorization": f"Bearer {TOKEN_A}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None


DEFINITION = {"name": "review", "steps": [
    {"id": "price", "kind": "automated", "set": {"total": "qty * 40"}},
    {"id": "approve", "kind": "approval", "depends_on": ["price"], "role": "writer"}]}


# A manual step only a clerk may complete (the test's writer is no clerk) unless assigned it.
MANUAL = {"name": "filing", "steps": [{"id": "file", "kind": "manual", "role": "clerk"}]}


def start_workflow(context):
    # The definitions load after the page shows: an empty (required) select would refuse to submit.
    el("#start-definition option")
    fill("#start-context", context)
    driver.find_element(By.CSS_SELECTOR, "#start-workflow [type=submit]").click()
    heading("review")


def marked():
    """What the drawing highlights: answer node ids, how many edges, the start node's id."""
    nodes = sorted(e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, "#drawing .node.answer"))
    origin = [e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, "#drawing .node.origin")]
    return nodes, count("#drawing .edge.answer"), origin


def add_node(node_id, node_type, properties, drawn):
    fill("#node-id", node_id)
    fill("#node-type", node_type)
    fill("#node-properties", json.dumps(properties))
    driver.find_element(By.CSS_SELECTOR, "#add-node [type=submit]").click()
    text_in("#drawn-counts", drawn)


def main():
    # No session: the console opens on sign in.
    driver.get(URL + "/")
    heading("Sign in")
    check("without a session the console opens on sign in", "#/signin" in driver.current_url)
    visible("#signin-notice")
    shot("signin")

    # A wrong token: the gateway's problem+json title and detail are shown.
    fill("#signin-secret", "not-a-token")
    driver.find_element(By.CSS_SELECTOR, "#signin-form [type=submit]").click()
    visible("#problem")
    check("a refused sign-in shows the problem", "Unauthenticated" in driver.find_element(By.ID, "problem").text)

    sign_in(TOKEN_A)
    visible("#no-graphs")
    check("tenant A starts with no graphs", count("#graph-rows tr") == 0)
    check("the header names the session", "alice" in driver.find_element(By.ID, "who-name").text)

    fill("#new-graph-name", "supply chain")
    fill("#new-graph-description", "drawn by the browser test")
    driver.find_element(By.CSS_SELECTOR, "#create-graph [type=submit]").click()
    heading("supply chain")
    text_in("#drawn-counts", "0 nodes and 0 edges drawn, version 1 of 1")
    graph_url = driver.current_url
    check("creating a graph opens it", "#/graphs/" in graph_url)

    add_node("a", "person", {"name": "Alice"}, "1 node and 0 edges")
    add_node("b", "person", {"name": "Bob"}, "2 nodes and 0 edges")
    add_node("c", "place", {"name": "Depot"}, "3 nodes and 0 edges")
    fill("#edge-type", "knows")
    driver.find_element(By.CSS_SELECTOR, "#edge-source option[value=a]").click()
    driver.find_element(By.CSS_SELECTOR, "#edge-target option[value=b]").click()
    driver.find_element(By.CSS_SELECTOR, "#add-edge [type=submit]").click()
    text_in("#drawn-counts", "3 nodes and 1 edge drawn, version 5 of 5")
    check("three nodes are drawn", count("#drawing .node circle") == 3)
    check("one edge is drawn", count("#drawing .edge path.line") == 1)
    labels = sorted(t.text for t in driver.find_elements(By.CSS_SELECTOR, "#drawing .node-label"))
    check("nodes are labelled by name", labels == ["Alice", "Bob", "Depot"])

    # Selecting by keyboard: focus a node and press Enter.
    node = driver.find_element(By.CSS_SELECTOR, '#drawing .node[data-id="a"]')
    driver.execute_script("arguments[0].focus()", node)
    node.send_keys(Keys.ENTER)
    text_in("#selection", "person")
    check("the selected node's properties are shown",
          '"Alice"' in driver.find_element(By.ID, "selected-properties").get_attribute("value"))
    shot("graph")
    shot("graph-phone", 390, 844)

    # The version slider, by keyboard: three steps back is version 2, when only Alice existed.
    slider = driver.find_element(By.ID, "version-slider")
    driver.execute_script("arguments[0].focus()", slider)
    for _ in range(3):
        slider.send_keys(Keys.ARROW_LEFT)
    text_in("#drawn-counts", "1 node and 0 edges drawn, version 2 of 5")
    check("rolled back to version 2, one node is drawn", count("#drawing .node circle") == 1)
    check("an earlier version is read-only",
          not driver.find_element(By.CSS_SELECTOR, "#add-node [type=submit]").is_enabled())
    shot("graph-version")
    slider.send_keys(Keys.END)
    text_in("#drawn-counts", "3 nodes and 1 edge drawn, version 5 of 5")

    # Find: Alice's neighbours, the path from Alice to Bob and none to Depot, each answer listed
    # and highlighted in the drawing.
    driver.find_element(By.CSS_SELECTOR, "#find-node option[value=a]").click()
    driver.find_element(By.CSS_SELECTOR, "#find-neighbours [type=submit]").click()
    text_in("#find-summary", "1 neighbour of Alice")
    check("Alice's neighbour is listed with its edge", driver.find_element(By.ID, "find-items").text == "Bob — knows (out)")
    check("the neighbour and the edge to it are highlighted, Alice as the start",
          marked() == (["b"], 1, ["a"]))
    shot("graph-neighbours")
    driver.find_element(By.CSS_SELECTOR, "#find-node option[value=b]").click()
    driver.find_element(By.CSS_SELECTOR, "#find-direction option[value=in]").click()
    driver.find_element(By.CSS_SELECTOR, "#find-neighbours [type=submit]").click()
    text_in("#find-summary", "1 neighbour of Bob")
    check("Bob's neighbour along incoming edges is Alice", driver.find_element(By.ID, "find-items").text == "Alice — knows (in)")
    driver.find_element(By.CSS_SELECTOR, "#path-from option[value=a]").click()
    driver.find_element(By.CSS_SELECTOR, "#path-to option[value=b]").click()
    driver.find_element(By.CSS_SELECTOR, "#find-path [type=submit]").click()
    text_in("#find-summary", "A path of 1 hop: Alice → Bob")
    check("the path's nodes and edge are highlighted", marked() == (["a", "b"], 1, ["a"]))
    shot("graph-path")
    driver.find_element(By.CSS_SELECTOR, "#path-to option[value=c]").click()
    driver.find_element(By.CSS_SELECTOR, "#find-path [type=submit]").click()
    text_in("#find-summary", "No path")
    check("no path to Depot, nothing highlighted", marked() == ([], 0, []))
    # Back a version, the answers (about the latest) are off; forward again, they return.
    driver.execute_script("arguments[0].focus()", slider)
    slider.send_keys(Keys.ARROW_LEFT)
    text_in("#drawn-counts", "version 4 of 5")
    check("at an earlier version the find forms are off",
          not driver.find_element(By.CSS_SELECTOR, "#find-path [type=submit]").is_enabled())
    slider.send_keys(Keys.END)
    text_in("#drawn-counts", "version 5 of 5")

    # A rule the service refuses: the problem's title and detail reach the page.
    add_node("a", "person", {}, "version 5 of 5")
    visible("#problem")
    problem = driver.find_element(By.ID, "problem").text
    check(f"a duplicate node shows the API's problem ({problem!r})", "a" in problem and len(problem) > 10)
    shot("problem")

    # Live: another writer adds a node through the API. The open graph redraws at the new version
    # without reloading, and the event shows in the graph's live panel.
    el("#graph-live .feed-status[data-subscribed]")
    driver.execute_script("window.cimNotReloaded = true")
    graph_id = graph_url.rsplit("/", 1)[1]
    rest("POST", f"/api/v1/graphs/{graph_id}/nodes", {"id": "d", "type": "place", "properties": {"name": "Dock"}})
    text_in("#drawn-counts", "4 nodes and 1 edge drawn, version 6 of 6")
    check("another writer's node is drawn without reloading",
          driver.execute_script("return window.cimNotReloaded === true") and count("#drawing .node circle") == 4)
    text_in("#graph-live .event-rows", "node_added")
    latest = driver.find_element(By.CSS_SELECTOR, "#graph-live .event-rows tr").text
    check(f"the graph's live panel shows the event, newest first ({latest!r})",
          "node_added" in latest and "alice" in latest)
    shot("graph-live", show="#graph-live")

    driver.get(URL + "/#/graphs")
    heading("Graphs")
    el('#graph-rows tr')
    check("the list shows the new graph", count("#graph-rows tr") == 1)
    shot("graphs")
    shot("graphs-phone", 390, 844)

    # The live events page: every graph event of the tenant, then only one aggregate's.
    driver.find_element(By.CSS_SELECTOR, '#nav a[href="#/events"]').click()
    heading("Live events")
    el("#events-filter ~ section .feed-status[data-subscribed]")
    rest("POST", f"/api/v1/graphs/{graph_id}/nodes", {"id": "e", "type": "place", "properties": {"name": "Quay"}})
    text_in(".event-rows", "node_added")
    row = driver.find_element(By.CSS_SELECTOR, ".event-rows tr")
    check("the events page shows the node added elsewhere", graph_id in row.text and "node_added" in row.text)
    check("the event links to its graph",
          row.find_element(By.TAG_NAME, "a").get_attribute("href").endswith(f"#/graphs/{graph_id}"))
    other = rest("POST", "/api/v1/graphs", {"name": "elsewhere"})["graph_id"]
    text_in(".event-rows", "graph_created")
    fill("#events-aggregate-id", other)
    driver.find_element(By.CSS_SELECTOR, "#events-filter [type=submit]").click()
    text_in("#events-watching", other)
    el("#events-filter ~ section .feed-status[data-subscribed]")
    rest("POST", f"/api/v1/graphs/{graph_id}/nodes", {"id": "f", "type": "place"})
    rest("POST", f"/api/v1/graphs/{other}/nodes", {"id": "x", "type": "place", "properties": {"name": "X"}})
    text_in(".event-rows", "node_added")
    rows = driver.find_elements(By.CSS_SELECTOR, ".event-rows tr")
    check("filtered by aggregate, only that graph's event arrives",
          len(rows) == 1 and other in rows[0].text and graph_id not in rows[0].text)
    shot("events")
    shot("events-phone", 390, 844)

    # A graph's own changes: the other graph renamed, then archived (pressed twice): it stays
    # readable, with every change refused and its forms off.
    driver.get(URL + f"/#/graphs/{other}")
    heading("elsewhere")
    driver.find_element(By.CSS_SELECTOR, "#manage-graph summary").click()
    fill("#graph-name", "elsewhere, renamed")
    driver.find_element(By.CSS_SELECTOR, "#rename-graph [type=submit]").click()
    heading("elsewhere, renamed")
    archive = driver.find_element(By.ID, "archive-graph")
    archive.click()
    text_in("#archive-graph", "Press again to archive")
    check("one press does not archive", rest("GET", f"/api/v1/graphs/{other}")["status"] == "active")
    archive.click()
    text_in("#graph-meta", "archived")
    stored = rest("GET", f"/api/v1/graphs/{other}")
    check(f"renamed and archived in the API ({stored['name']!r}, {stored['status']})",
          stored["name"] == "elsewhere, renamed" and stored["status"] == "archived")
    check("an archived graph offers no changes",
          not driver.find_element(By.CSS_SELECTOR, "#add-node [type=submit]").is_enabled()
          and not driver.find_element(By.ID, "archive-graph").is_enabled())
    check("an archived graph is still drawn", count("#drawing .node circle") == 1)
    shot("graph-archived")

    # Workflows: a definition added in the page, an instance started; its approval step waits,
    # is approved with a comment, and the instance completes without a reload. A second one is
    # rejected and fails.
    driver.find_element(By.CSS_SELECTOR, '#nav a[href="#/workflows"]').click()
    heading("Workflows")
    fill("#new-definition", json.dumps(DEFINITION))
    driver.find_element(By.CSS_SELECTOR, "#create-definition [type=submit]").click()
    text_in("#definitions", "price (automated) → approve (approval)")
    start_workflow('{"qty": 3}')
    el('#step-rows tr[data-step="price"][data-status="completed"]')
    el('#step-rows tr[data-step="approve"][data-status="waiting_approval"]')
    check("the approval step waits, with approve and reject offered",
          count("#approve-approve") == 1 and count("#reject-approve") == 1)
    shot("workflow")
    fill("#comment-approve", "fine by me")
    driver.find_element(By.ID, "approve-approve").click()
    el('#workflow-meta[data-status="completed"]')
    text_in("#timeline", "step approval granted")
    check("the timeline shows the approval and its comment", "fine by me" in driver.find_element(By.ID, "timeline").text)
    shot("workflow-done")
    shot("workflow-phone", 390, 844)
    driver.get(URL + "/#/workflows")
    heading("Workflows")
    start_workflow('{"qty": 1}')
    el('#step-rows tr[data-step="approve"][data-status="waiting_approval"]')
    driver.find_element(By.ID, "reject-approve").click()
    el('#workflow-meta[data-status="failed"]')
    text_in("#timeline", "step approval rejected")
    driver.get(URL + "/#/workflows")
    heading("Workflows")
    text_in("#instances", "failed")
    check("the instance list shows both outcomes",
          count('#instance-rows tr') == 2 and "completed" in driver.find_element(By.ID, "instances").text)
    shot("workflows")

    # Control: a third instance paused, sent a signal, resumed and cancelled with a reason; at
    # each status only what the service allows is offered.
    start_workflow('{"qty": 2}')
    el('#step-rows tr[data-step="approve"][data-status="waiting_approval"]')
    controls = lambda: [b.get_attribute("id") for b in driver.find_elements(By.CSS_SELECTOR, "#control-actions button")]
    check(f"running: pause and cancel offered ({controls()})", controls() == ["workflow-pause", "workflow-cancel"])
    driver.find_element(By.ID, "workflow-pause").click()
    el('#workflow-meta[data-status="paused"]')
    check(f"paused: resume and cancel offered ({controls()})", controls() == ["workflow-resume", "workflow-cancel"])
    fill("#signal-name", "go_ahead")
    fill("#signal-payload", '{"by": "the browser test"}')
    driver.find_element(By.CSS_SELECTOR, "#send-signal [type=submit]").click()
    text_in("#timeline", "signal received — go_ahead")
    shot("workflow-paused")
    driver.find_element(By.ID, "workflow-resume").click()
    el('#workflow-meta[data-status="running"]')
    fill("#control-reason", "not needed any more")
    driver.find_element(By.ID, "workflow-cancel").click()
    el('#workflow-meta[data-status="cancelled"]')
    text_in("#timeline", "workflow cancelled — “not needed any more”")
    check("cancelled: nothing more is offered", controls() == [] and not driver.find_element(By.ID, "send-signal").is_displayed())
    instance = rest("GET", "/api/v1/workflows/" + driver.current_url.rsplit("/", 1)[1])
    check(f"the API has it cancelled with the signal in its context ({instance['status']}, {instance['context'].get('signals')})",
          instance["status"] == "cancelled" and instance["context"]["signals"]["go_ahead"] == {"by": "the browser test"})
    shot("workflow-cancelled")

    # A manual step for people holding a role the writer lacks: completing it is refused (the
    # service's problem shown), assigned to the writer it is theirs to complete, and its output
    # lands in the context.
    filing = rest("POST", "/api/v1/workflow-definitions", {"definition": MANUAL})["id"]
    started = rest("POST", "/api/v1/workflows", {"definition_id": filing, "context": {}})["id"]
    driver.get(URL + f"/#/workflows/{started}")
    heading("filing")
    el('#step-rows tr[data-step="file"][data-status="running"]')
    check("the running manual step offers complete and assign",
          count("#complete-file") == 1 and count("#assign-file") == 1 and count("#approve-file") == 0)
    fill("#output-file", '{"filed": true}')
    driver.find_element(By.ID, "complete-file").click()
    visible("#problem")
    refusal = driver.find_element(By.ID, "problem").text
    check(f"completing a step of another role is refused ({refusal!r})", "Permission denied" in refusal and "clerk" in refusal)
    fill("#assignee-file", "user:alice")
    driver.find_element(By.ID, "assign-file").click()
    el('#step-rows tr[data-step="file"][data-assignee="user:alice"]')
    text_in("#timeline", "task assigned")
    shot("workflow-manual")
    shot("workflow-manual-phone", 390, 844, show='#step-rows tr[data-step="file"]')
    fill("#output-file", '{"filed": true}')
    driver.find_element(By.ID, "complete-file").click()
    el('#workflow-meta[data-status="completed"]')
    done = rest("GET", f"/api/v1/workflows/{started}")
    check(f"the assignee completed it and its output is in the context ({done['context']})",
          done["status"] == "completed" and '"filed": true' in json.dumps(done["context"]))
    shot("workflow-manual-done")

    # Agents by state and the tasks: two agents (one active), a task queued for a capability.
    agent = rest("POST", "/api/v1/agents", {"name": "reviewer", "agent_type": "system"})["agent_id"]
    rest("PUT", f"/api/v1/agents/{agent}/capabilities", {"capabilities": ["code_review"]})
    rest("POST", f"/api/v1/agents/{agent}/activate")
    rest("POST", "/api/v1/agents", {"name": "standby", "agent_type": "human"})
    rest("POST", "/api/v1/tasks", {"required_capabilities": ["code_review"], "payload": {"pr": 42}, "priority": 5})
    driver.find_element(By.CSS_SELECTOR, '#nav a[href="#/agents"]').click()
    heading("Agents")
    text_in("#agent-states", "active (1)")
    text_in("#agent-states", "deployed (1)")
    driver.find_element(By.CSS_SELECTOR, '#agent-states [data-state="active"]').click()
    check("the active tab lists the active agent only",
          [r.get_attribute("data-state") for r in driver.find_elements(By.CSS_SELECTOR, "#agent-rows tr")] == ["active"])
    el('#task-rows tr[data-state="queued"]')
    check("the queued task is listed with what it needs", "code_review" in driver.find_element(By.ID, "tasks").text)
    shot("agents")
    shot("agents-phone", 390, 844)
    driver.find_element(By.ID, f"agent-{agent}").click()
    text_in("#task-scope", "reviewer holds or last held")
    check("no worker is connected, so the agent holds none of them", count("#task-rows tr") == 0)
    driver.find_element(By.ID, f"agent-{agent}").click()
    select = driver.find_element(By.ID, "task-state")
    select.find_element(By.CSS_SELECTOR, 'option[value="completed"]').click()
    text_in("#task-scope", "latest completed tasks")
    check("no task is completed", count("#task-rows tr") == 0)

    # Deploy an agent in the page and move it through its lifecycle; decommissioning (final) is
    # for admins, so a writer is not offered it.
    driver.find_element(By.CSS_SELECTOR, '#agent-states [data-state="all"]').click()
    fill("#deploy-name", "night_shift")
    driver.find_element(By.CSS_SELECTOR, '#deploy-type option[value="human"]').click()
    fill("#deploy-limit", "2")
    fill("#deploy-capabilities", "triage, code_review")
    driver.find_element(By.CSS_SELECTOR, "#deploy-agent [type=submit]").click()
    night_row = '#agent-rows tr[data-name="night_shift"]'
    el(night_row + '[data-state="deployed"]')
    night = driver.find_element(By.CSS_SELECTOR, night_row).get_attribute("data-agent-id")
    row_text = driver.find_element(By.CSS_SELECTOR, night_row).text
    check(f"deployed with its capabilities and limit ({row_text!r})", "code_review, triage" in row_text and "0 / 2" in row_text)
    offered_to = lambda: [b.get_attribute("id").split("-")[0] for b in driver.find_elements(By.CSS_SELECTOR, night_row + " .actions button")]
    check(f"deployed: activate only, no decommission for a writer ({offered_to()})", offered_to() == ["activate"])
    for verb, state, then in [("activate", "active", ["suspend", "offline"]), ("offline", "offline", ["activate", "suspend"]),
                              ("suspend", "suspended", ["activate"])]:
        driver.find_element(By.ID, f"{verb}-{night}").click()
        el(f'{night_row}[data-state="{state}"]')
        check(f"{verb}: {state}, then {then} offered ({offered_to()})", offered_to() == then)
    text_in("#agent-states", "suspended (1)")
    shot("agents-lifecycle")

    # Configure an AI agent: activating it without a model is refused with the service's problem;
    # a bad tool name too; with a model, a prompt and tools it activates. Permissions are for
    # admins, so a writer is offered no permission form.
    fill("#deploy-name", "summarizer")
    driver.find_element(By.CSS_SELECTOR, '#deploy-type option[value="ai"]').click()
    fill("#deploy-limit", "1")
    fill("#deploy-capabilities", "summaries")
    driver.find_element(By.CSS_SELECTOR, "#deploy-agent [type=submit]").click()
    ai_row = '#agent-rows tr[data-name="summarizer"]'
    el(ai_row + '[data-state="deployed"]')
    summarizer = driver.find_element(By.CSS_SELECTOR, ai_row).get_attribute("data-agent-id")
    driver.find_element(By.ID, f"activate-{summarizer}").click()
    visible("#problem")
    refusal = driver.find_element(By.ID, "problem").text
    check(f"an AI agent without a model is not activated, the service says why ({refusal!r})", "model" in refusal.lower())
    check("a writer is offered no permission form", count("#config-permissions") == 0)
    driver.find_element(By.CSS_SELECTOR, f'#config-agent option[value="{summarizer}"]').click()
    text_in('#config-current dd[data-fact="model"]', "none")
    shot("agents-config-refused", show="#config-current")
    fill("#model-provider", "ollama")
    fill("#model-name", "llama3:8b")
    fill("#model-parameters", '{"temperature": 0.2}')
    driver.find_element(By.CSS_SELECTOR, "#config-model [type=submit]").click()
    text_in('#config-current dd[data-fact="model"]', "ollama · llama3:8b")
    fill("#system-prompt", "You summarise documents.\nBe brief.")
    driver.find_element(By.CSS_SELECTOR, "#config-prompt [type=submit]").click()
    text_in('#config-current dd[data-fact="prompt"]', "You summarise documents.")
    fill("#tool-names", "Web Search")
    driver.find_element(By.ID, "tools-enable").click()
    visible("#problem")
    refusal = driver.find_element(By.ID, "problem").text
    check(f"a tool name that is not dotted snake_case is refused ({refusal!r})", "Web Search" in refusal)
    fill("#tool-names", "web.search, web.fetch")
    driver.find_element(By.ID, "tools-enable").click()
    text_in('#config-current dd[data-fact="tools"]', "web.search")
    fill("#tool-names", "web.fetch")
    driver.find_element(By.ID, "tools-disable").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#config-current dd[data-fact="tools"]').text == "web.search")
    driver.find_element(By.ID, f"activate-{summarizer}").click()
    el(ai_row + '[data-state="active"]')
    text_in('#config-current dd[data-fact="state"]', "active (ai)")
    shot("agents-config", show="#agent-config")
    shot("agents-config-phone", 390, 844, show="#config-tools")
    stored = rest("GET", f"/api/v1/agents/{summarizer}")
    check(f"the API has its model, prompt and tools ({stored['model']}, {stored['tools']})",
          stored["model"] == {"provider": "ollama", "model": "llama3:8b", "parameters": {"temperature": 0.2}}
          and stored["system_prompt"] == "You summarise documents.\nBe brief." and stored["tools"] == ["web.search"])

    # Documents: a new document with its first content (the progress bar's values are recorded
    # as the upload reports them), a second version, both listed, a version downloaded.
    # In a directory of their own with a plain absolute path (ChromeDriver refuses `..` in one).
    files = tempfile.mkdtemp(prefix="cim-console-")
    first = os.path.join(files, "upload-1.bin")
    second = os.path.join(files, "upload-2.txt")
    with open(first, "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024))
    with open(second, "w") as f:
        f.write("the second version\n")
    try:
        driver.find_element(By.CSS_SELECTOR, '#nav a[href="#/documents"]').click()
        heading("Documents")
        fill("#new-document-title", "Site plan")
        fill("#new-document-description", "uploaded by the browser test")
        driver.find_element(By.ID, "new-document-file").send_keys(first)
        driver.execute_script(
            "window.cimProgress = [];"
            "new MutationObserver(() => window.cimProgress.push(document.getElementById('new-document-progress').value))"
            ".observe(document.getElementById('new-document-progress'), {attributes: true});")
        driver.find_element(By.CSS_SELECTOR, "#create-document [type=submit]").click()
        text_in("#new-document-progress-label", "stored as version 1")
        seen = driver.execute_script("return window.cimProgress")
        check(f"the progress bar followed the upload to 100% ({seen[-3:]})", seen and seen[-1] == 100)
        text_in("#documents", "Site plan")
        check("the list shows the document with its content", "upload-1.bin · v1" in driver.find_element(By.ID, "documents").text)
        shot("documents")
        driver.find_element(By.LINK_TEXT, "Site plan").click()
        heading("Site plan")
        el('#version-rows tr[data-version="1"]')
        driver.find_element(By.ID, "next-version-file").send_keys(second)
        driver.find_element(By.CSS_SELECTOR, "#upload-version [type=submit]").click()
        el('#version-rows tr[data-version="2"]')
        check("both versions are listed, newest first",
              [r.get_attribute("data-version") for r in driver.find_elements(By.CSS_SELECTOR, "#version-rows tr")] == ["2", "1"])
        href = driver.find_element(By.ID, "download-1").get_attribute("href")
        got = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.arrayBuffer()).then(b => done(b.byteLength), e => done(String(e)));",
            href)
        check(f"version 1 downloads whole ({got} bytes)", got == 3 * 1024 * 1024)
        # A signed link to version 1, to hand to someone without an account: it downloads with
        # no cookie and no token.
        driver.find_element(By.ID, "share-version-1").click()
        text_in("#share-link", "no sign-in needed")
        shared = driver.find_element(By.ID, "share-url").get_attribute("value")
        got = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'omit'}).then(r => r.ok ? r.arrayBuffer() : Promise.reject(r.status)).then(b => done(b.byteLength), e => done(String(e)));",
            shared)
        check(f"the shared link downloads version 1 without credentials ({got} bytes, {shared[:60]}…)",
              got == 3 * 1024 * 1024 and "/api/v1/shared/" in shared)
        shot("document")
        shot("document-phone", 390, 844)

        # An earlier version restored (a draft's content may change): version 1's content comes
        # back as version 3. A link to the graph, shown in the Links card.
        driver.find_element(By.ID, "restore-version-1").click()
        el('#version-rows tr[data-version="3"]')
        restored = {v["version"]: v["cid"] for v in rest("GET", f"/api/v1/documents/{driver.current_url.rsplit('/', 1)[1]}/versions")["items"]}
        check("restoring version 1 makes its content version 3", restored[3] == restored[1] != restored[2])
        check("the current version offers no restore", count("#restore-version-3") == 0 and count("#restore-version-2") == 1)
        driver.find_element(By.CSS_SELECTOR, '#link-type option[value="references"]').click()
        fill("#link-target", f"graph:{graph_id}")
        driver.find_element(By.CSS_SELECTOR, "#add-link [type=submit]").click()
        text_in("#link-list", f"references → graph:{graph_id}")
        check("a writer is offered no retention or hold", count("#set-retention") == 0 and count("#place-hold") == 0)
        shot("document-links", show="#linking")

        # Tags: the document's own, and a content version's.
        doc_id = driver.current_url.rsplit("/", 1)[1]
        # Saving tags replaces the whole record, so it is sent over the version the page read:
        # another writer's change in between is refused, not overwritten; read again, the tags
        # typed are kept and the second save keeps both changes.
        read = rest("GET", f"/api/v1/documents/{doc_id}")
        rest("PATCH", f"/api/v1/documents/{doc_id}", {"title": read["title"], "description": "changed elsewhere",
                                                     "tags": [], "metadata": read["metadata"]})
        fill("#document-tags", "plans, site")
        driver.find_element(By.CSS_SELECTOR, "#edit-tags [type=submit]").click()
        visible("#problem")
        conflict = driver.find_element(By.ID, "problem").text
        check(f"saving tags over a stale read is refused ({conflict!r})", "Version conflict" in conflict)
        text_in("#document-meta", "changed elsewhere")
        check("the typed tags are kept", driver.find_element(By.ID, "document-tags").get_attribute("value") == "plans, site")
        driver.find_element(By.CSS_SELECTOR, "#edit-tags [type=submit]").click()
        text_in("#document-meta", "tags: plans, site")
        driver.find_element(By.CSS_SELECTOR, '#tag-version option[value="1"]').click()
        fill("#version-tag", "v1.0")
        driver.find_element(By.CSS_SELECTOR, "#tag-version-form [type=submit]").click()
        text_in('#version-rows tr[data-version="1"] td.tags', "v1.0")
        # Lifecycle: submitted for review (no new version offered then), approved with a
        # reason, archived (only restore offered, tags off), restored to approved.
        driver.find_element(By.ID, "state-in_review").click()
        el('#document-meta[data-state="in_review"]')
        check("in review, no new version is offered", not driver.find_element(By.ID, "upload-version").is_displayed())
        offered = lambda: [b.get_attribute("id") for b in driver.find_elements(By.CSS_SELECTOR, "#state-actions button")]
        check(f"in review: approve, reject, back to draft, archive, delete ({offered()})",
              offered() == ["state-approved", "state-rejected", "state-draft", "archive-document", "delete-document"])
        fill("#state-reason", "checked on site")
        driver.find_element(By.ID, "state-approved").click()
        el('#document-meta[data-state="approved"]')
        check(f"approved: back to draft, archive, delete ({offered()})",
              offered() == ["state-draft", "archive-document", "delete-document"])
        shot("document-lifecycle", show="#lifecycle")
        shot("document-lifecycle-phone", 390, 844, show="#lifecycle")
        driver.find_element(By.ID, "archive-document").click()
        el('#document-meta[data-state="archived"]')
        check(f"archived: only restore ({offered()})", offered() == ["restore-document"])
        check("archived: tags are off", not driver.find_element(By.CSS_SELECTOR, "#edit-tags [type=submit]").is_enabled())
        shot("document-archived", show="#lifecycle")
        driver.find_element(By.ID, "restore-document").click()
        el('#document-meta[data-state="approved"]')
        stored = rest("GET", f"/api/v1/documents/{doc_id}")
        tagged = {v["version"]: v["tags"] for v in rest("GET", f"/api/v1/documents/{doc_id}/versions")["items"]}
        check(f"the API has it approved, tagged, version 1 tagged ({stored['state']}, {stored['tags']}, {tagged})",
              stored["state"] == "approved" and stored["tags"] == ["plans", "site"] and tagged == {1: ["v1.0"], 2: [], 3: []})
    finally:
        shutil.rmtree(files)

    # Operations are for admins: a writer has no link to them and is refused at their address.
    check("a writer is offered no operations page",
          not driver.find_element(By.ID, "nav-operations").is_displayed())
    driver.get(URL + "/#/operations")
    heading("Operations")
    visible("#problem")
    check("a writer at the operations address is refused",
          "permission" in driver.find_element(By.ID, "problem").text.lower())

    # Sign out: the cookie is revoked on the server, not only forgotten by the page.
    driver.find_element(By.ID, "sign-out").click()
    heading("Sign in")
    text_in("#signin-notice", "Signed out")
    check("after signing out the API refuses the browser", api_status("GET", "/api/v1/graphs") == 401)
    driver.get(graph_url)
    heading("Sign in")
    # The sign-in page drawn again for this address (not the one still showing "Signed out."):
    # only then does signing in return to it.
    text_in("#signin-notice", "Sign in to continue")
    check("after signing out a graph's page goes to sign in", "#/signin" in driver.current_url)

    # Tenant B signs in where A left off (sign-in returns to the page asked for) and sees
    # nothing of A's graph, not even by its address.
    sign_in(TOKEN_B, lands_on="Graph")
    visible("#problem")
    check("tenant B opening A's graph is told it does not exist",
          "not found" in driver.find_element(By.ID, "problem").text.lower())
    check("nothing of A's graph is drawn", count("#drawing") == 0)
    shot("other-tenant")
    driver.get(URL + "/#/graphs")
    heading("Graphs")
    visible("#no-graphs")
    check("tenant B lists no graphs", count("#graph-rows tr") == 0)

    # A session the gateway no longer holds (expired: its Redis entry is gone): the next call is
    # refused and the console goes to sign in, saying why.
    driver.delete_cookie("cim_session")
    driver.add_cookie({"name": "cim_session", "value": "0" * 64, "path": "/", "httpOnly": True,
                       "sameSite": "Strict"})
    fill("#new-graph-name", "never made")
    driver.find_element(By.CSS_SELECTOR, "#create-graph [type=submit]").click()
    heading("Sign in")
    text_in("#signin-notice", "session has ended")
    check("signed out, the header offers no sign out", not driver.find_element(By.ID, "sign-out").is_displayed())
    check("an expired session is sent to sign in", "#/signin" in driver.current_url)
    shot("signin-expired")
    # No cookie at all on a fresh load: sign in too.
    driver.delete_all_cookies()
    driver.get(URL + "/#/graphs")
    # Only the address changed (the sign-in page from before may still show): wait for the
    # console to send it back to sign in.
    wait.until(lambda d: "#/signin" in d.current_url)
    heading("Sign in")
    check("a missing session is sent to sign in", "#/signin" in driver.current_url)

    # An admin of tenant A is a customer's admin, not an operator: no operations link, and the
    # page at its address shows the API's refusal and nothing of the other tenants' traffic.
    sign_in(ADMIN_A)
    # An admin may decommission an agent (final: pressed twice).
    driver.get(URL + "/#/agents")
    heading("Agents")
    el(f"#decommission-{night}").click()
    text_in(f"#decommission-{night}", "Press again")
    check("one press does not decommission", rest("GET", f"/api/v1/agents/{night}")["state"] == "suspended")
    driver.find_element(By.ID, f"decommission-{night}").click()
    el(f'{night_row}[data-state="decommissioned"]')
    check("decommissioned: nothing more is offered", count(night_row + " .actions button") == 0)
    # An admin grants and revokes permissions.
    driver.find_element(By.CSS_SELECTOR, f'#config-agent option[value="{summarizer}"]').click()
    fill("#permission-names", "documents.read, documents.write")
    driver.find_element(By.ID, "permissions-grant").click()
    text_in('#config-current dd[data-fact="permissions"]', "documents.write")
    fill("#permission-names", "documents.write")
    driver.find_element(By.ID, "permissions-revoke").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#config-current dd[data-fact="permissions"]').text == "documents.read")
    shot("agents-permissions", show="#agent-config")
    check("the API has the permission granted", rest("GET", f"/api/v1/agents/{summarizer}")["permissions"] == ["documents.read"])
    # An admin sets retention and places a legal hold; deleting for good is refused while either
    # holds, with the service's reason shown each time.
    driver.get(URL + f"/#/documents/{doc_id}")
    heading("Site plan")
    until = el("#retain-until")
    driver.execute_script("arguments[0].value = arguments[1]", until, "2031-06-30T12:00")
    driver.find_element(By.CSS_SELECTOR, "#set-retention [type=submit]").click()
    text_in("#compliance-state", "retained until 2031-06-30 12:00 UTC")
    fill("#hold-reason", "audit 2027")
    driver.find_element(By.ID, "place-hold").click()
    el('#compliance-state[data-hold="true"]')
    purge = driver.find_element(By.ID, "purge-document")
    purge.click()
    text_in("#purge-document", "Press again")
    purge.click()
    visible("#problem")
    refusal = driver.find_element(By.ID, "problem").text
    check(f"deleting for good under a legal hold is refused ({refusal!r})", "legal hold (audit 2027)" in refusal)
    shot("document-compliance", show="#compliance")
    shot("document-compliance-phone", 390, 844, show="#compliance")
    driver.find_element(By.ID, "release-hold").click()
    el('#compliance-state[data-hold="false"]')
    for _ in range(2):
        driver.find_element(By.ID, "purge-document").click()
    text_in("#problem", "retained until 2031-06-30")
    stored = rest("GET", f"/api/v1/documents/{doc_id}")
    check(f"the API has it retained, not held, not deleted ({stored['retain_until']}, {stored['legal_hold']}, {stored['state']})",
          stored["retain_until"].startswith("2031-06-30T12:00") and not stored["legal_hold"] and stored["state"] == "approved")
    # An admin quarantines version 2's content (found to be malware): its download link is gone,
    # the row says why there is none, and the API has it quarantined.
    check("every version can be quarantined", [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#quarantine-version option")] == ["3", "2", "1"])
    driver.find_element(By.CSS_SELECTOR, '#quarantine-version option[value="2"]').click()
    fill("#quarantine-reason", "malware found")
    driver.find_element(By.CSS_SELECTOR, "#quarantine [type=submit]").click()
    text_in('#version-rows tr[data-version="2"]', "quarantined")
    check("a quarantined version offers no download", count("#download-2") == 0 and count("#download-1") == 1)
    check("it is no longer offered for quarantine", count('#quarantine-version option[value="2"]') == 0)
    flags = {v["version"]: v["quarantined"] for v in rest("GET", f"/api/v1/documents/{doc_id}/versions")["items"]}
    check(f"the API has version 2 quarantined ({flags})", flags == {1: False, 2: True, 3: False})
    shot("document-quarantine", show="#version-rows")
    check("a tenant's admin is offered no operations page", not driver.find_element(By.ID, "nav-operations").is_displayed())
    driver.get(URL + "/#/operations")
    heading("Operations")
    visible("#problem")
    refusal = driver.find_element(By.ID, "problem").text
    check(f"a tenant's admin at the operations address is refused ({refusal!r})",
          "Permission denied" in refusal and "CIM_GATEWAY_OPERATOR_TENANTS" in refusal and count("#services") == 0)
    shot("operations-refused")
    driver.find_element(By.ID, "sign-out").click()
    heading("Sign in")
    text_in("#signin-notice", "Signed out")

    # An operator (an admin of the operator tenant), offered the operations page in the nav:
    # services and their readiness, NATS's checks, streams with their replicas and consumer lag,
    # dead letters, dashboards. The test
    # runs the graph, agent, workflow and document services and the websocket server (read at its
    # admin listener); the webhook service's address answers nothing.
    # Signing in returns to the page asked for: the operations page, this time answered.
    sign_in(OPERATOR, lands_on="Operations")
    check("an operator is offered the operations page", visible("#nav-operations").is_displayed())
    text_in("#services", "graph")
    state = {r.get_attribute("data-service"): r.find_elements(By.TAG_NAME, "td")[1].text
             for r in driver.find_elements(By.CSS_SELECTOR, "#services tbody tr")}
    check(f"readiness by service ({state})", state == {
        "gateway": "ready", "graph": "ready", "agent": "ready", "workflow": "ready", "document": "ready",
        "webhook": "not ready", "websocket": "ready"})
    detail = {r.get_attribute("data-service"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "#services tbody tr")}
    check(f"each domain service's dependency checks are shown ({detail['document']!r})",
          all("postgres: ok; nats: ok" in detail[s] for s in ("graph", "document", "agent", "workflow")))
    check(f"the document service's object store is checked ({detail['document']!r})", "object_store: ok" in detail["document"])
    nats = {r.get_attribute("data-check"): r.find_elements(By.TAG_NAME, "td")[1].text
            for r in driver.find_elements(By.CSS_SELECTOR, "#nats-checks tbody tr")}
    check(f"NATS is checked as cim doctor checks it ({nats})", nats == {"jetstream": "ok", "cluster": "ok"})
    graph_row = driver.find_element(By.CSS_SELECTOR, '#streams tr[data-stream="graph"]').text
    check(f"the graph stream's replicas are shown ({graph_row!r})", "1 replica" in graph_row)
    check("the graph stream's consumers are listed with their lag",
          count('#streams tr[data-stream="graph"][data-consumer="gateway-cache"]') == 1)
    text_in("#dead-letter-total", "1 dead letter")
    check("the dead letter is counted by its consumer's subject", "console-test" in driver.find_element(By.ID, "dead-letters").text)
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#dashboards a")]
    check(f"Grafana dashboards are linked ({len(links)})", "http://grafana.test:3000/d/cim-overview" in links and len(links) == 7)
    shot("operations")
    shot("operations-phone", 390, 844)

    # The refusals the test provokes are logged by the browser as failed loads, not script errors.
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "400" not in e["message"] and "401" not in e["message"]
            and "403" not in e["message"] and "404" not in e["message"] and "409" not in e["message"]
            and "422" not in e["message"]]
    check(f"no script errors in the console ({logs})", not logs)


try:
    main()
    print("console: all checks passed", flush=True)
except Exception:
    try:
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
        print("page at failure:", driver.current_url, flush=True)
        print(driver.find_element(By.TAG_NAME, "body").text[:2000], flush=True)
    finally:
        driver.quit()
    raise
driver.quit()
