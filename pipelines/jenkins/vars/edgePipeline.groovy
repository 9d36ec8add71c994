/*
 * edgePipeline: edgeci's declarative pipeline for Jenkins (shared library "edgeci", library path
 * pipelines/jenkins/).
 *
 *   @Library('edgeci') _
 *   edgePipeline(agentLabel: 'edgeci', prodLabel: 'ostree-prod', submitter: 'release-managers')
 *
 * Plan → Lint → Compose → Push → Stage → Boot test on the build agent, for the blueprints the push
 * changed (every blueprint on the monthly timer build of the promote branch); then Approve (an `input`
 * on no agent, so no executor is held while people decide) and Promote on the production host, where
 * the last milestone and the lock on the production repository are taken only after the approval.
 * Builds run concurrently: a newer candidate builds while an older one waits, and the milestones retire
 * the older wait once a newer candidate is approved. A failed or UNSTABLE build never reaches Approve.
 *
 * Who may approve, which branch promotes, the production agent and the credential ids are the library's
 * configuration (resources/edgeci/settings.properties of the library version the controller or the
 * folder pins), never the built branch's Jenkinsfile: passing one of them to edgePipeline is an error.
 * See pipelines/jenkins/README.md.
 */

/** Settings only the library's configuration may set (resources/edgeci/settings.properties). */
List librarySettingNames() {
    return ['submitter', 'promoteBranch', 'prodLabel', 'lockResource', 'jenkinsCredentials',
            'composeKeyCredentials', 'bootTestKeyCredentials', 'registryCredentials', 'imageSigningKeyCredentials']
}

def call(Map config = [:]) {
    for (String key : config.keySet()) {
        if (librarySettingNames().contains(key)) {
            error("edgePipeline: '${key}' comes from the library's configuration (resources/edgeci/settings.properties" +
                  " of the library the controller or folder pins), not from the Jenkinsfile")
        }
    }
    Map settings = librarySettings()
    Map cfg = [
        edgeci              : 'edgeci',            // how to run edgeci on the agents, e.g. 'python3 -m edgeci'
        agentLabel          : 'edgeci',            // build agents: ostree, skopeo, qemu
        cron                : 'H H 1 * *',         // monthly rebuild of every blueprint (promote branch only)
        stageAction         : 'serve',             // 'serve' (edgeci serves the stage) or 'wait' (stage host)
        approvalTimeoutHours: 72,
        keepBuilds          : '50',
    ] + config + settings
    // multibranch: only the promote branch runs the monthly rebuild and reaches Approve
    boolean promoteBranch = env.BRANCH_NAME == null || env.BRANCH_NAME == cfg.promoteBranch
    List targets = []  // [[blueprint: 'gateway', arch: 'x86_64'], …], decided by the Plan stage

    pipeline {
        agent none
        options {
            // No disableConcurrentBuilds(): a new push builds while an older candidate waits for approval;
            // the milestones abort the older build once a newer one is approved.
            skipStagesAfterUnstable()
            buildDiscarder(logRotator(numToKeepStr: cfg.keepBuilds))
        }
        triggers {
            cron(promoteBranch ? cfg.cron : '')  // an empty spec schedules nothing: other branches never fire
        }
        parameters {
            booleanParam(name: 'REBUILD_ALL', defaultValue: false,
                         description: 'Rebuild every blueprint, not only the changed ones')
        }
        stages {
            stage('Candidates') {
                agent { label cfg.agentLabel }
                when {
                    anyOf {
                        changeset 'blueprints/**'
                        triggeredBy 'TimerTrigger'
                        expression { return params.REBUILD_ALL || currentBuild.previousSuccessfulBuild == null }
                    }
                }
                stages {
                    stage('Plan') {
                        steps {
                            script {
                                def timer = currentBuild.getBuildCauses('hudson.triggers.TimerTrigger$TimerTriggerCause')
                                String base = env.GIT_PREVIOUS_SUCCESSFUL_COMMIT ?: ''
                                boolean all = !timer.isEmpty() || params.REBUILD_ALL || !(base ==~ /[0-9a-f]{40}/)
                                env.EDGECI_BASE = all ? '' : base
                                // the monthly rebuild may keep production's version: compose bumps its patch
                                env.EDGECI_REBUILD = all ? ' --rebuild' : ''
                                String out = sh(returnStdout: true,
                                                script: "${cfg.edgeci} jenkins targets " + (all ? '--all' : "--base ${base}"))
                                targets.addAll(parseTargets(out))
                                env.EDGECI_BUILD_NODE = env.NODE_NAME
                                env.EDGECI_BUILD_WORKSPACE = env.WORKSPACE
                                echo(targets ? "edgeci: building ${describe(targets)}" + (all ? ' (every blueprint)' : '')
                                             : 'edgeci: no blueprint changed: nothing to build')
                            }
                        }
                    }
                    stage('Lint') {
                        when { expression { return !targets.isEmpty() } }
                        steps {
                            sh "${cfg.edgeci} lint" + (env.EDGECI_BASE ? " --base ${env.EDGECI_BASE}" : env.EDGECI_REBUILD)
                        }
                        post { always { junit(allowEmptyResults: true, testResults: 'reports/lint-*.xml') } }
                    }
                    stage('Compose') {
                        when { expression { return !targets.isEmpty() } }
                        steps {
                            script {
                                // the compose key signs the provenance: bound in this stage only
                                withKeyFile(cfg.composeKeyCredentials, 'EDGECI_COMPOSE_KEY') {
                                    // on top of production (its ref tip), so candidates are updates of what runs
                                    eachTarget(targets) { t ->
                                        sh "${cfg.edgeci} compose ${t.blueprint} --arch ${t.arch}" +
                                           (t.parentUrl ? " --url '${t.parentUrl}'" : '') + env.EDGECI_REBUILD
                                    }
                                }
                            }
                        }
                        post { always { junit(allowEmptyResults: true, testResults: 'reports/compose-*.xml') } }
                    }
                    stage('Push') {
                        when { expression { return !targets.isEmpty() } }
                        steps {
                            script {
                                withRegistryLogin(cfg.registryCredentials) {
                                    // the image signing key signs image-mode pushes: bound in this stage only
                                    withKeyFile(cfg.imageSigningKeyCredentials, 'EDGECI_IMAGE_SIGNING_KEY') {
                                        eachTarget(targets) { t -> sh "${cfg.edgeci} push ${t.blueprint} --arch ${t.arch}" }
                                    }
                                }
                            }
                        }
                        post { always { junit(allowEmptyResults: true, testResults: 'reports/push-*.xml') } }
                    }
                    stage('Stage') {
                        when { expression { return !targets.isEmpty() } }
                        steps {
                            // the stage server outlives this step (boot test, then promotion pull from it)
                            withEnv(['JENKINS_NODE_COOKIE=dontKillMe']) {
                                script {
                                    eachTarget(targets) { t ->
                                        sh "${cfg.edgeci} stage ${cfg.stageAction} ${t.blueprint} --arch ${t.arch}"
                                    }
                                }
                            }
                        }
                        post { always { junit(allowEmptyResults: true, testResults: 'reports/stage-*.xml') } }
                    }
                    stage('Boot test') {
                        when { expression { return !targets.isEmpty() } }
                        steps {
                            script {
                                // the boot-test key signs the result: bound in this stage only
                                withKeyFile(cfg.bootTestKeyCredentials, 'EDGECI_BOOT_TEST_KEY') {
                                    eachTarget(targets) { t -> sh "${cfg.edgeci} boot-test ${t.blueprint} --arch ${t.arch}" }
                                }
                                // the exact commits the approval names, and the gate binds the approval to
                                String out = sh(returnStdout: true,
                                                script: "${cfg.edgeci} jenkins candidates ${targetArgs(targets)}")
                                setCandidates(targets, out)
                            }
                            // ready for approval: builds older than this one that are still building are aborted
                            milestone(ordinal: 1, label: 'candidate')
                        }
                        post {
                            always {
                                junit(allowEmptyResults: true, testResults: 'reports/boot-test-*.xml')
                                // the build records and the signed evidence travel to the production agent
                                stash(name: 'edgeci-records', includes: records(), allowEmpty: true)
                                archiveArtifacts(artifacts: records(), allowEmptyArchive: true)
                            }
                        }
                    }
                }
            }
            stage('Approve') {
                agent none  // nothing is held while waiting: no executor, no lock, no milestone yet
                when {
                    beforeInput true
                    allOf {
                        expression { return !targets.isEmpty() }
                        expression { return currentBuild.currentResult == 'SUCCESS' }
                        expression { return promoteBranch }
                    }
                }
                options { timeout(time: cfg.approvalTimeoutHours, unit: 'HOURS') }
                input {
                    id 'Promote'
                    message "Promote to production?\n${approvalText(targets)}"
                    ok 'Promote'
                    submitter cfg.submitter  // the library's configuration, not the Jenkinsfile's
                }
                steps {
                    script {
                        // Jenkins records who answered the input on the build (ApproverAction); the gate reads
                        // it back through the API: no name travels through this pipeline
                        env.EDGECI_APPROVED = 'true'
                        echo "edgeci: approved for ${describe(targets)}"
                    }
                }
            }
            stage('Promote') {
                agent { label cfg.prodLabel }
                when {
                    beforeAgent true
                    allOf {
                        expression { return !targets.isEmpty() }
                        expression { return currentBuild.currentResult == 'SUCCESS' }
                        expression { return env.EDGECI_APPROVED == 'true' }
                    }
                }
                steps {
                    // After the approval, in this order: older builds still waiting for approval, and an older
                    // build that gets here after a newer one passed, are aborted (no downgrade); then one
                    // promotion at a time.
                    milestone(ordinal: 2, label: 'promote')
                    lock(cfg.lockResource) {
                        unstash 'edgeci-records'
                        script {
                            withJenkinsToken(cfg.jenkinsCredentials) {
                                for (Map t : targets) {
                                    withEnv(["EDGECI_BLUEPRINT=${t.blueprint}", "EDGECI_ARCH=${t.arch}",
                                             "EDGECI_APPROVED_CHECKSUM=${t.checksum}"]) {
                                        // the approver is read from this build through the Jenkins API
                                        sh "${cfg.edgeci} gate \"\$EDGECI_BLUEPRINT\" --arch \"\$EDGECI_ARCH\" --source jenkins" +
                                           " --build \"\$BUILD_NUMBER\" --approved-checksum \"\$EDGECI_APPROVED_CHECKSUM\""
                                        sh "${cfg.edgeci} promote \"\$EDGECI_BLUEPRINT\" --arch \"\$EDGECI_ARCH\""
                                    }
                                }
                            }
                        }
                    }
                }
                post {
                    always {
                        junit(allowEmptyResults: true, testResults: 'reports/gate-*.xml,reports/promote-*.xml')
                        archiveArtifacts(artifacts: records(), allowEmptyArchive: true)
                    }
                }
            }
        }
        post {
            cleanup {
                script {
                    // edgeci's own stage server (serve mode) ends with the build, on the node it runs on
                    if (cfg.stageAction == 'serve' && env.EDGECI_BUILD_NODE && !targets.isEmpty()) {
                        node(env.EDGECI_BUILD_NODE) {
                            dir(env.EDGECI_BUILD_WORKSPACE) {
                                for (Map t : targets) {
                                    sh "${cfg.edgeci} stage stop ${t.blueprint} --arch ${t.arch}"
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/** What travels from the build agent to the production agent: records, signed evidence, reports. */
String records() {
    return 'build/*/*/record.json,build/*/*/evidence.json,reports/**'
}

/** key=value lines of the library's resources/edgeci/settings.properties ('#' comments); unknown keys fail. */
Map librarySettings() {
    String text = libraryResource('edgeci/settings.properties')
    Map out = [:]
    for (String raw : text.readLines()) {
        String line = raw.trim()
        if (!line || line.startsWith('#')) {
            continue
        }
        int eq = line.indexOf('=')
        String key = eq > 0 ? line.substring(0, eq).trim() : ''
        if (!librarySettingNames().contains(key)) {
            error("edgeci: resources/edgeci/settings.properties: unknown or malformed line '${raw}'" +
                  " (keys: ${librarySettingNames().join(', ')})")
        }
        out[key] = line.substring(eq + 1).trim()
    }
    for (String key : librarySettingNames()) {
        if (!out.containsKey(key)) {
            error("edgeci: resources/edgeci/settings.properties has no '${key}' (empty means none)")
        }
    }
    return out
}

/** body() with the secret file credential bound to `variable` (its path), when a credential id is configured. */
void withKeyFile(String credentialsId, String variable, Closure body) {
    if (credentialsId) {
        withCredentials([file(credentialsId: credentialsId, variable: variable)]) {
            body()
        }
    } else {
        body()
    }
}

/** body() with EDGECI_REGISTRY_USER/EDGECI_REGISTRY_PASSWORD bound, when a credential id is configured. */
void withRegistryLogin(String credentialsId, Closure body) {
    if (credentialsId) {
        withCredentials([usernamePassword(credentialsId: credentialsId, usernameVariable: 'EDGECI_REGISTRY_USER',
                                          passwordVariable: 'EDGECI_REGISTRY_PASSWORD')]) {
            body()
        }
    } else {
        body()
    }
}

/**
 * "BLUEPRINT ARCH PARENT_URL" lines from `edgeci jenkins targets` → [[blueprint:, arch:, parentUrl:], …];
 * PARENT_URL is production (compose builds on top of it) or '-' for a first release. Names are checked
 * here, so they can go into shell commands.
 */
List parseTargets(String out) {
    List found = []
    for (String line : out.readLines()) {
        List parts = line.trim().tokenize(' ')
        if (parts.isEmpty()) {
            continue
        }
        if (parts.size() != 3 || !(parts[0] ==~ /[A-Za-z0-9._-]+/) || !(parts[1] ==~ /[A-Za-z0-9_]+/)
                || !(parts[2] ==~ /-|[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:\/?#@%+=,-]+/)) {
            error("edgeci: unexpected line from 'edgeci jenkins targets': '${line}'")
        }
        found << [blueprint: parts[0], arch: parts[1], parentUrl: parts[2] == '-' ? '' : parts[2]]
    }
    return found
}

/** "BLUEPRINT ARCH CHECKSUM VERSION" lines from `edgeci jenkins candidates` → t.checksum, t.version. */
void setCandidates(List targets, String out) {
    for (String line : out.readLines()) {
        List parts = line.trim().tokenize(' ')
        if (parts.isEmpty()) {
            continue
        }
        if (parts.size() != 4 || !(parts[2] ==~ /[0-9a-f]{64}/)) {
            error("edgeci: unexpected line from 'edgeci jenkins candidates': '${line}'")
        }
        for (Map t : targets) {
            if (t.blueprint == parts[0] && t.arch == parts[1]) {
                t.checksum = parts[2]
                t.version = parts[3]
            }
        }
    }
    for (Map t : targets) {
        if (!t.checksum) {
            error("edgeci: no boot-tested commit for ${t.blueprint}/${t.arch}")
        }
    }
}

/** The input's message: one "edgeci-approve CHECKSUM" line per candidate (the gate binds to it). */
String approvalText(List targets) {
    List lines = []
    for (Map t : targets) {
        lines << "edgeci-approve ${t.checksum}  ${t.blueprint}/${t.arch} ${t.version}".toString()
    }
    return lines.join('\n')
}

/** body() with EDGECI_JENKINS_USER/EDGECI_JENKINS_TOKEN from username/password credentials, if configured. */
void withJenkinsToken(String credentialsId, Closure body) {
    if (credentialsId) {
        withCredentials([usernamePassword(credentialsId: credentialsId, usernameVariable: 'EDGECI_JENKINS_USER',
                                          passwordVariable: 'EDGECI_JENKINS_TOKEN')]) {
            body()
        }
    } else {
        body()
    }
}

/** Run body(target) for every blueprint × arch, in parallel branches named after them. */
void eachTarget(List targets, Closure body) {
    Map branches = [:]
    for (Map t : targets) {
        Map target = t
        branches["${target.blueprint}/${target.arch}".toString()] = { body(target) }
    }
    parallel(branches)
}

/** "gateway/x86_64 kiosk/x86_64": the targets as command-line arguments (names checked by parseTargets). */
String targetArgs(List targets) {
    return describe(targets).replace(', ', ' ')
}

String describe(List targets) {
    List names = []
    for (Map t : targets) {
        names << "${t.blueprint}/${t.arch}".toString()
    }
    return names.join(', ')
}
